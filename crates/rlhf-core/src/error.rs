//! Typed errors of the core crate. `CoreError::is_bad_input` tells the CLI layer which
//! errors are the user's data (exit code 3) rather than a failure of the program (exit 1).

use std::path::PathBuf;

/// Result alias for the core crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Errors raised while reading, checking or writing artifacts.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file-system operation failed; names the file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A Parquet or Arrow operation failed on a file.
    #[error("{action} {path}: {source}")]
    Parquet {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file's schema does not match the artifact it should hold.
    #[error("{path}: not a valid `{artifact}` file: {detail}\n  expected schema: {expected}\n  found schema:    {found}\n  hint: was it written by another stage or an older version?")]
    SchemaMismatch {
        path: PathBuf,
        artifact: String,
        detail: String,
        expected: String,
        found: String,
    },
    /// Input data is malformed (a row or value that cannot be used).
    #[error("{path}{}: {message}", row.map(|r| format!(" row {r}")).unwrap_or_default())]
    BadInput {
        path: PathBuf,
        row: Option<usize>,
        message: String,
    },
    /// Two artifacts that must agree do not (tokenizer, schema version, ...).
    #[error("{what} mismatch: {left_name} has {left}, {right_name} has {right}\n  hint: {hint}")]
    Mismatch {
        what: &'static str,
        left_name: String,
        left: String,
        right_name: String,
        right: String,
        hint: String,
    },
    /// No input files matched a path or glob.
    #[error("no input files match {pattern}\n  hint: give a file, a folder of .parquet part files, or a glob")]
    NoInput { pattern: String },
    /// A tokenizer or chat-template failure.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A usage error detected after parsing (bad flag combination or value).
    #[error("{0}")]
    Usage(String),
    /// The stage stopped at a safe point because it received SIGTERM or SIGINT.
    #[error("stopped by {} ({what})", crate::signals::name(*signal))]
    Interrupted { signal: i32, what: String },
}

impl CoreError {
    /// A usage error (exit 2): a bad flag value or combination found after parsing.
    pub fn usage(message: impl Into<String>) -> Self {
        CoreError::Usage(message.into())
    }

    /// Wraps an io::Error with the action and the path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Wraps a Parquet/Arrow error with the action and the path it concerns.
    pub fn parquet(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CoreError::Parquet {
            action,
            path: path.into(),
            source: Box::new(source),
        }
    }

    /// True when the error is caused by the user's input data rather than the program:
    /// bad or mismatched data, input files that cannot be read, and Parquet files that
    /// cannot be decoded (corrupt or truncated); a failed write is not.
    pub fn is_bad_input(&self) -> bool {
        match self {
            CoreError::Io { action, source, .. } => {
                return matches!(*action, "reading" | "opening" | "listing" | "hashing")
                    && !is_machine_failure(source)
            }
            CoreError::Parquet { action, .. } => {
                return matches!(*action, "reading" | "reading footer of")
            }
            _ => {}
        }
        matches!(
            self,
            CoreError::SchemaMismatch { .. }
                | CoreError::BadInput { .. }
                | CoreError::Mismatch { .. }
                | CoreError::NoInput { .. }
                | CoreError::Tokenizer { .. }
        )
    }
}

/// I/O errors that are the machine's, not the data's, even while reading: a full disk, no
/// memory, an interrupted or timed-out network filesystem. Retrying may help (exit 1).
pub fn is_machine_failure(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::OutOfMemory | K::Interrupted | K::TimedOut | K::QuotaExceeded
    )
}
