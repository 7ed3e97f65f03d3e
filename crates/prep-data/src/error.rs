//! prep-data's error type. Every variant is the user's input (a flag, a file, a row), so
//! all of them map to the bad-input exit code (3); failures of the program itself travel as
//! plain anyhow errors (exit 1).

use std::path::{Path, PathBuf};

/// An input problem: a bad flag value, an unreadable file, or a fatal row.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    /// A flag value or combination that cannot work.
    #[error("{0}")]
    Flag(String),
    /// A file or row that cannot be used; names file and row.
    #[error("{path}{}: {message}", row.map(|r| format!(" row {r}")).unwrap_or_default())]
    Input {
        path: PathBuf,
        row: Option<usize>,
        message: String,
    },
}

impl PrepError {
    /// A problem with a file, or with one row of it (1-based).
    pub fn input(path: &Path, row: Option<usize>, message: impl Into<String>) -> PrepError {
        PrepError::Input {
            path: path.to_path_buf(),
            row,
            message: message.into(),
        }
    }

    /// A file that cannot be opened or read.
    pub fn unreadable(path: &Path, e: std::io::Error) -> PrepError {
        PrepError::input(path, None, format!("cannot read: {e}"))
    }
}

/// Classifier for `rlhf_core::cli::finish`: prep-data's own errors and core usage errors
/// are bad input (exit 3).
pub fn is_bad_input(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<PrepError>().is_some()
        || matches!(
            err.downcast_ref::<rlhf_core::CoreError>(),
            Some(rlhf_core::CoreError::Usage(_))
        )
}

/// Refuses an input path (file, folder, or glob) that names nothing, as bad input.
pub fn require_input(path: &Path) -> Result<(), PrepError> {
    let text = path.to_string_lossy();
    if path.exists() || text.contains(['*', '?', '[']) {
        Ok(())
    } else {
        Err(PrepError::input(path, None, "no such file or folder"))
    }
}
