//! Reading a configuration file and locating its problems as `FILE:LINE:COL`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// 1-based line of the offending value (0 when the file could not be read).
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found while loading a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file's text with the means to turn byte offsets into line and column.
/// A place in a configuration file, kept for problems found after loading
/// (e.g. a certificate's contents, checked by the tenant's own process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Location {
    /// An error at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }

    /// A warning (a problem that does not make the file invalid) at this place.
    pub fn warning(&self, message: impl Into<String>) -> ConfigError {
        self.error(format!("warning: {}", message.into()))
    }
}

pub(super) struct Source {
    pub(super) path: PathBuf,
    text: String,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Source {
    pub(super) fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let text =
            crate::files::read_regular_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    file: path.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read configuration file: {e}"),
                }])
            })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        })
    }

    fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Where `span` starts, for a problem found later (by another program).
    pub(super) fn locate(&self, span: Range<usize>) -> Location {
        let (line, column) = self.location(span.start);
        Location {
            file: self.path.clone(),
            line,
            column,
        }
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl std::fmt::Display) {
        let (line, column) = self.location(span.start);
        self.errors.push(ConfigError {
            file: self.path.clone(),
            line,
            column,
            message: message.to_string(),
        });
    }

    /// Records a problem that does not make the file invalid.
    pub(super) fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.location(span.start);
        self.warnings.push(ConfigError {
            file: self.path.clone(),
            line,
            column,
            message: format!("warning: {}", message.into()),
        });
    }

    pub(super) fn take_warnings(&mut self) -> Vec<ConfigError> {
        std::mem::take(&mut self.warnings)
    }

    pub(super) fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ConfigErrors> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().replace('\n', " ");
            self.error(span, message);
            ConfigErrors(std::mem::take(&mut self.errors))
        })
    }

    /// Resolves `relative` against the directory of this file.
    pub(super) fn resolve(&self, relative: &str) -> PathBuf {
        resolve_relative(&self.path, relative)
    }

    /// `value` and the problems found in it, if any (located, in file order).
    pub(super) fn finish_lenient<T>(mut self, value: T) -> (T, Option<ConfigErrors>) {
        if self.errors.is_empty() {
            (value, None)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            (value, Some(ConfigErrors(self.errors)))
        }
    }

    pub(super) fn finish<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Resolves a path written in `file` relative to that file's directory.
pub fn resolve_relative(file: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    file.parent()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|| path.to_path_buf())
}
