//! Bearer tokens guarding TCP endpoints (the admin endpoint, a TCP registration
//! listener): read from a file the operator or tenant controls, compared in
//! constant time.

use std::path::{Path, PathBuf};

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read (missing, not a regular file, too large).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The token file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is too short to resist guessing.
    #[error("{}: the token must be at least {MIN_TOKEN_LEN} characters", path.display())]
    TooShort {
        /// The token file.
        path: PathBuf,
    },
}

/// Reads the token in `path` (a regular file of bounded size; surrounding
/// white space dropped), refusing one shorter than [`MIN_TOKEN_LEN`].
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text =
        crate::files::read_regular_text(path, crate::files::MAX_PEM_BYTES).map_err(|source| {
            TokenError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Compares without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Authorization` header value is `Bearer TOKEN` with `token`.
pub fn bearer_matches(authorization: &str, token: &str) -> bool {
    authorization
        .trim()
        .strip_prefix("Bearer ")
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert!(bearer_matches(
            "Bearer s3cret-token-0123",
            "s3cret-token-0123"
        ));
        assert!(bearer_matches(
            " Bearer s3cret-token-0123 ",
            "s3cret-token-0123"
        ));
        assert!(!bearer_matches(
            "Bearer s3cret-token-0124",
            "s3cret-token-0123"
        ));
        assert!(!bearer_matches(
            "Basic s3cret-token-0123",
            "s3cret-token-0123"
        ));
        assert!(!bearer_matches("", "s3cret-token-0123"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn short_or_unreadable_tokens_are_refused() {
        let dir = std::env::temp_dir().join(format!("sy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "too-short\n").unwrap();
        let refused = read_token(&short).unwrap_err();
        assert!(matches!(refused, TokenError::TooShort { .. }), "{refused}");
        assert!(refused.to_string().contains("at least 16"), "{refused}");
        let good = dir.join("good");
        std::fs::write(&good, "  0123456789abcdef\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef");
        assert!(matches!(
            read_token(Path::new("/dev/zero")),
            Err(TokenError::Unreadable { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
