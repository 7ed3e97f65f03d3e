//! Lineage: what produced an artifact, stored as JSON in the Parquet footer's key-value
//! metadata (key `rlhf.lineage`) and in `lineage.json` of model and adapter folders.
//! Nothing time- or host-dependent goes in, so reruns stay byte-identical.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::hash;
use crate::schema::{Artifact, SCHEMA_VERSION};

/// Footer key holding the lineage JSON.
pub const LINEAGE_KEY: &str = "rlhf.lineage";

/// One input of a stage and the hash of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Role of the input (e.g. "prompts", "model", "adapter").
    pub role: String,
    /// Path as given on the command line.
    pub path: String,
    /// blake3 of the file, or of the folder's files.
    pub blake3: String,
}

/// What produced an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Producing binary, e.g. "sample-rollouts".
    pub producer: String,
    /// Producer version (crate version).
    pub version: String,
    /// Command-line arguments (without the program name).
    pub args: Vec<String>,
    /// Inputs with their content hashes.
    pub inputs: Vec<InputRef>,
    /// Artifact schema name.
    pub schema: String,
    /// Artifact schema version.
    pub schema_version: u32,
    /// Hash of the tokenizer the token columns were made with, when there are any.
    pub tokenizer_hash: Option<String>,
    /// Stage-specific summary figures (e.g. reward statistics).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Lineage {
    /// Lineage for `artifact` written by `producer`, with this process's arguments.
    pub fn new(producer: &str, version: &str, artifact: Artifact) -> Lineage {
        Lineage {
            producer: producer.to_string(),
            version: version.to_string(),
            args: std::env::args().skip(1).collect(),
            inputs: Vec::new(),
            schema: artifact.name().to_string(),
            schema_version: SCHEMA_VERSION,
            tokenizer_hash: None,
            extra: BTreeMap::new(),
        }
    }

    /// The same lineage for another artifact of the same run.
    pub fn for_artifact(&self, artifact: Artifact) -> Lineage {
        Lineage {
            schema: artifact.name().to_string(),
            ..self.clone()
        }
    }

    /// Records an input file or folder with its content hash.
    pub fn add_input(&mut self, role: &str, path: &Path) -> Result<()> {
        let blake3 = if path.is_dir() {
            hash::dir_hash(path)?
        } else {
            hash::file_hash(path)?
        };
        self.inputs.push(InputRef {
            role: role.to_string(),
            path: path.display().to_string(),
            blake3,
        });
        Ok(())
    }

    /// Sets the tokenizer hash.
    pub fn with_tokenizer(mut self, hash: Option<String>) -> Lineage {
        self.tokenizer_hash = hash;
        self
    }

    /// Serialises to JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses lineage JSON.
    pub fn from_json(text: &str, path: &Path) -> Result<Lineage> {
        serde_json::from_str(text).map_err(|e| CoreError::BadInput {
            path: path.to_path_buf(),
            row: None,
            message: format!("unreadable lineage metadata: {e}"),
        })
    }

    /// Refuses when two tokenizer hashes are both known and differ, naming both sides.
    pub fn check_tokenizer(
        data_name: &str,
        data_hash: Option<&str>,
        model_name: &str,
        model_hash: &str,
    ) -> Result<()> {
        match data_hash {
            Some(h) if h != model_hash => Err(CoreError::Mismatch {
                what: "tokenizer",
                left_name: data_name.to_string(),
                left: h.to_string(),
                right_name: model_name.to_string(),
                right: model_hash.to_string(),
                hint: "the file was tokenized for another model; regenerate it with this model's tokenizer".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_tokenizer_check() {
        let mut l = Lineage::new("test", "0.1.0", Artifact::Prompts);
        l.args = vec!["--seed".into(), "3".into()];
        l.tokenizer_hash = Some("abc".into());
        let back = Lineage::from_json(&l.to_json(), Path::new("x")).unwrap();
        assert_eq!(back, l);
        let err = Lineage::check_tokenizer("rollouts.parquet", Some("abc"), "rm/", "def")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollouts.parquet has abc"), "{err}");
        assert!(err.contains("rm/ has def"), "{err}");
        assert!(Lineage::check_tokenizer("a", None, "b", "def").is_ok());
    }
}
