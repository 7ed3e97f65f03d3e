//! Typed errors of the algorithm crate: numerical failures (NaN/inf, naming the step),
//! shape or state mismatches (naming the tensor, expected vs found), checkpoint I/O
//! (naming the file) and libtorch failures (with what was being done).

use std::path::PathBuf;

/// Result alias for the algorithm crate.
pub type Result<T, E = AlgoError> = std::result::Result<T, E>;

/// Errors raised by the optimiser, checkpoints, losses and advantage estimators.
#[derive(Debug, thiserror::Error)]
pub enum AlgoError {
    /// A loss or statistic became NaN or infinite.
    #[error("{what} is {value} at step {step}\n  hint: lower the learning rate, enable gradient clipping (--max-grad-norm), or check the rewards for extreme values")]
    NonFinite { what: String, value: f64, step: u64 },
    /// A tensor or state entry does not match what was expected.
    #[error("{what}: expected {expected}, found {found}")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },
    /// A value outside its valid range (a bad hyperparameter or input).
    #[error("{0}")]
    Invalid(String),
    /// A checkpoint or state file that cannot be used.
    #[error("{path}: {message}")]
    BadState { path: PathBuf, message: String },
    /// A file-system operation failed; names the file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A libtorch operation failed.
    #[error("{context}: {source}")]
    Tch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    /// An error from the core crate (atomic folders, metrics).
    #[error(transparent)]
    Core(Box<rlhf_core::CoreError>),
}

impl From<rlhf_core::CoreError> for AlgoError {
    fn from(e: rlhf_core::CoreError) -> Self {
        AlgoError::Core(Box::new(e))
    }
}

impl AlgoError {
    /// Wraps a libtorch error with what was being done.
    pub fn tch(context: impl Into<String>, source: tch::TchError) -> Self {
        AlgoError::Tch {
            context: context.into(),
            source,
        }
    }

    /// Wraps an io::Error with the action and the path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AlgoError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A mismatch between an expected and a found value.
    pub fn mismatch(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) -> Self {
        AlgoError::Mismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// True when the error is caused by the user's input (a bad state file or value).
    pub fn is_bad_input(&self) -> bool {
        match self {
            AlgoError::BadState { .. } | AlgoError::Mismatch { .. } => true,
            AlgoError::Core(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

/// Classifier for `rlhf_core::cli::finish`: true when an error in a cause chain is an
/// `AlgoError` caused by bad input.
pub fn is_bad_input(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<AlgoError>()
        .is_some_and(AlgoError::is_bad_input)
}

/// Stops training with a clear error when a loss is NaN or infinite.
pub fn ensure_finite(loss: f64, step: u64) -> Result<()> {
    ensure_finite_named("loss", loss, step)
}

/// Like [`ensure_finite`] for any named quantity (a gradient norm, a KL value).
pub fn ensure_finite_named(what: &str, value: f64, step: u64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(AlgoError::NonFinite {
            what: what.to_string(),
            value,
            step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_finite_names_step_and_value() {
        assert!(ensure_finite(1.5, 3).is_ok());
        let e = ensure_finite(f64::NAN, 17).unwrap_err().to_string();
        assert!(e.contains("loss is NaN at step 17"), "{e}");
        let e = ensure_finite_named("grad norm", f64::INFINITY, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("grad norm is inf at step 4"), "{e}");
    }
}
