//! label-pairs' error type: a flag that cannot work (or a labelling folder that belongs to
//! other inputs) is a usage error (exit 2); a file or journal line that cannot be used is
//! bad input (exit 3). Failures of the program itself travel as plain anyhow errors (exit 1).

use std::path::{Path, PathBuf};

/// A problem with the flags or with the input data.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A flag value or combination that cannot work.
    #[error("{0}")]
    Flag(String),
    /// A file, or one line or row of it, that cannot be used.
    #[error("{path}{}: {message}", line.map(|r| format!(" line {r}")).unwrap_or_default())]
    Input {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

impl LabelError {
    /// A problem with a file, or with one line of it (1-based).
    pub fn input(path: &Path, line: Option<usize>, message: impl Into<String>) -> LabelError {
        LabelError::Input {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// A usage error.
    pub fn flag(message: impl Into<String>) -> LabelError {
        LabelError::Flag(message.into())
    }
}

/// Classifier for `rlhf_core::cli::finish_with`: bad input data (exit 3).
pub fn is_bad_input(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        err.downcast_ref::<LabelError>(),
        Some(LabelError::Input { .. })
    )
}

/// Classifier for `rlhf_core::cli::finish_with`: usage errors (exit 2).
pub fn is_usage(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(err.downcast_ref::<LabelError>(), Some(LabelError::Flag(_)))
}
