//! The `tracing` subscriber both binaries install.

use std::io::{self, Write};

/// The longest log line written; longer ones are cut and marked. Peers decide
/// what some lines contain (an upstream's error text, a client's name), so no
/// line may be unbounded.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// Installs the global subscriber: human-readable lines on stderr, or one JSON
/// object per line when `SWITCHYARD_LOG_FORMAT=json`. The level comes from
/// `RUST_LOG` (default `info`). Every line is cut at [`MAX_LINE_BYTES`].
pub fn init(component: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BoundedLines(io::stderr()))
        // A log reader that went away (a closed stderr pipe) must not stop
        // the process: tracing-subscriber would report the failed write with
        // `eprintln!`, which panics on the same broken pipe, in whatever task
        // was logging (a tenant's handoff service, which then never asked
        // for its own stop, and the orphan never exited).
        .log_internal_errors(false)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(component, "logging initialised");
    }
}

/// Writes each formatted event (the formatter hands over one line per
/// `write`) cut at [`MAX_LINE_BYTES`].
struct BoundedLines<W: Write>(W);

impl<W: Write> Write for BoundedLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= MAX_LINE_BYTES {
            return self.0.write_all(buf).map(|()| buf.len());
        }
        let mut line = Vec::with_capacity(MAX_LINE_BYTES + 32);
        line.extend_from_slice(&buf[..MAX_LINE_BYTES]);
        line.extend_from_slice(
            format!(" …[{} more bytes cut]\n", buf.len() - MAX_LINE_BYTES).as_bytes(),
        );
        self.0.write_all(&line).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_short_ones_kept() {
        let mut out = BoundedLines(Vec::new());
        out.write_all(b"short\n").unwrap();
        let long = vec![b'a'; MAX_LINE_BYTES * 3];
        assert_eq!(out.write(&long).unwrap(), long.len());
        let text = String::from_utf8_lossy(&out.0);
        assert!(text.starts_with("short\naaa"));
        assert!(text.len() < MAX_LINE_BYTES + 64);
        assert!(text.ends_with("more bytes cut]\n"));
    }
}
