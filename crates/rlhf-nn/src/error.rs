//! The crate's typed error. Variants carry the file, tensor or key involved, what was expected
//! and what was found, so a message can be acted on without reading the code.

use std::path::PathBuf;

/// Errors from loading, saving and running models and adapters.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config.json, adapter_config.json, an index) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration key is missing or has an unusable value.
    #[error("{path}: key `{key}`: {message}")]
    Config {
        /// The configuration file (or `<preset>` / `<arguments>`).
        path: PathBuf,
        /// The key.
        key: String,
        /// Expected vs found.
        message: String,
    },
    /// The folder holds an architecture this crate does not implement.
    #[error("{path}: unsupported model_type `{found}`; supported: {supported}")]
    UnknownArch {
        /// The config.json.
        path: PathBuf,
        /// The model_type found.
        found: String,
        /// The supported model types.
        supported: String,
    },
    /// The folder holds only a pickle checkpoint.
    #[error(
        "{path}: pickle checkpoints (pytorch_model.bin) are not loaded (they can run code); \
         convert the folder to safetensors, e.g. in Python: \
         AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
    )]
    PickleCheckpoint {
        /// The pickle file.
        path: PathBuf,
    },
    /// No weights file in a model or adapter folder.
    #[error("{dir}: no {expected} found")]
    NoWeights {
        /// The folder.
        dir: PathBuf,
        /// What was looked for.
        expected: String,
    },
    /// A safetensors file is malformed or has an unsupported dtype.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: missing tensor `{name}`{hint}")]
    MissingTensor {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// A hint (starts with "; " when present).
        hint: String,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, expected {expected:?} (from the config)"
    )]
    ShapeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A checkpoint holds tensors that do not belong to the model or adapter.
    #[error("{path}: unexpected tensor(s) {names}{hint}")]
    UnexpectedTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The unexpected names (the first few).
        names: String,
        /// A hint (starts with "; " when present).
        hint: String,
    },
    /// An adapter folder cannot be used with this base model.
    #[error("{path}: {message}")]
    BadAdapter {
        /// The adapter folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An adapter name that is not (or already) attached to the model.
    #[error("adapter `{name}`: {message}")]
    Adapter {
        /// The adapter name.
        name: String,
        /// What is wrong, e.g. "not attached; attached: policy, reward".
        message: String,
    },
    /// Invalid arguments from the caller (dtype, sampling parameters, batch shapes).
    #[error("{0}")]
    Argument(String),
    /// A `--device` that cannot be used here (a usage error, exit 2): malformed, or a
    /// CUDA device this machine or this build does not have.
    #[error("{0}")]
    Device(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl NnError {
    /// True when the error comes from the content of a user-supplied folder or argument
    /// (exit code 3, "bad input"), rather than from a failure of the program or machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            // Missing, or content that cannot be read as what it should be (a JSON file
            // that is not UTF-8, a file shorter than its own header says).
            NnError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
            ),
            NnError::Torch(_) | NnError::Device(_) => false,
            _ => true,
        }
    }

    /// Builds an [`NnError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
