//! prep-data's error type: a flag that cannot work is a usage error (exit 2), a file or
//! row that cannot be used is bad input (exit 3); failures of the program itself travel as
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

/// Classifier for `rlhf_core::cli::finish_with`: prep-data's input errors (exit 3).
pub fn is_bad_input(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        err.downcast_ref::<PrepError>(),
        Some(PrepError::Input { .. })
    )
}

/// Classifier for `rlhf_core::cli::finish_with`: prep-data's flag errors (exit 2).
pub fn is_usage(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(err.downcast_ref::<PrepError>(), Some(PrepError::Flag(_)))
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
