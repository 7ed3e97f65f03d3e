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
    /// The stage's resolved settings as TOML (every flag with its value, defaults and
    /// `--config` included; what `--print-config` prints): `--config` reads it back to
    /// rerun the stage with the same settings whatever a later version's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl Lineage {
    /// Lineage for `artifact` written by `producer`, with this process's arguments.
    pub fn new(producer: &str, version: &str, artifact: Artifact) -> Lineage {
        Lineage {
            producer: producer.to_string(),
            version: version.to_string(),
            args: crate::config::effective_args()
                .map(<[String]>::to_vec)
                .unwrap_or_else(|| std::env::args().skip(1).collect()),
            inputs: Vec::new(),
            schema: artifact.name().to_string(),
            schema_version: SCHEMA_VERSION,
            tokenizer_hash: None,
            extra: BTreeMap::new(),
            config: crate::config::resolved().map(str::to_string),
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

    /// What identifies the run that wrote a file, the same for every shard of one run: the
    /// producer, its version, the arguments without the per-task ones ([`run_args`]), the
    /// inputs' roles and content hashes (not their paths), schema and tokenizer.
    pub fn run_key(&self) -> String {
        let inputs: Vec<(&str, &str)> = self
            .inputs
            .iter()
            .map(|i| (i.role.as_str(), i.blake3.as_str()))
            .collect();
        serde_json::json!({
            "producer": self.producer,
            "version": self.version,
            "args": run_args(&self.args),
            "inputs": inputs,
            "schema": self.schema,
            "schema_version": self.schema_version,
            "tokenizer_hash": self.tokenizer_hash,
        })
        .to_string()
    }

    /// Says how two lineages' runs differ (for messages), e.g. "arguments: [..] vs [..]".
    pub fn run_difference(&self, other: &Lineage) -> String {
        if self.producer != other.producer || self.version != other.version {
            return format!(
                "producer: {} {} vs {} {}",
                self.producer, self.version, other.producer, other.version
            );
        }
        let (a, b) = (run_args(&self.args), run_args(&other.args));
        if a != b {
            return format!("arguments: `{}` vs `{}`", a.join(" "), b.join(" "));
        }
        for (x, y) in self.inputs.iter().zip(&other.inputs) {
            if x.blake3 != y.blake3 {
                return format!("input `{}`: {} vs {}", x.role, x.path, y.path);
            }
        }
        if self.inputs.len() != other.inputs.len() {
            return "inputs".into();
        }
        "schema or tokenizer".into()
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

/// Flags that differ between the tasks of one run without changing what is computed: the
/// shard, threads, logging, summaries and where metrics stream. `true`: the flag takes a
/// value.
const PER_TASK_FLAGS: [(&str, bool); 13] = [
    ("--shard-index", true),
    ("--num-shards", true),
    ("--threads", true),
    ("--log-format", true),
    ("--summary-json", true),
    ("--live-metrics", true),
    ("--tensorboard", true),
    ("--json", false),
    ("--no-progress", false),
    ("--verbose", false),
    ("--quiet", false),
    ("--record-timings", false),
    ("--keep-checkpoint", false),
];

/// Flags whose value is a path: the same data may be named in several ways (`./x`, an
/// absolute path, another mount), and inputs are compared by content hash anyway.
const PATH_FLAGS: [&str; 21] = [
    "--out",
    "--in",
    "--out-dir",
    "--rejects",
    "--model",
    "--adapter",
    "--prompts",
    "--rollouts",
    "--scores",
    "--reward-model",
    "--ref-model",
    "--critic",
    "--critic-init",
    "--preferences",
    "--ratings",
    "--normalize-with",
    "--data",
    "--input",
    "--tokenizer",
    "--text-file",
    "--run-dir",
];

/// `args` without the per-task flags (see [`PER_TASK_FLAGS`]) and `-v`/`-q` counts, with
/// path values (see [`PATH_FLAGS`]) replaced by `<path>`.
pub fn run_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    let mut path_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if std::mem::take(&mut path_value) {
            out.push("<path>".to_string());
            continue;
        }
        if let Some((name, _)) = a.split_once('=') {
            if PATH_FLAGS.contains(&name) {
                out.push(format!("{name}=<path>"));
                continue;
            }
        } else if PATH_FLAGS.contains(&a.as_str()) {
            path_value = true;
            out.push(a.clone());
            continue;
        }
        let short_count = a.len() > 1
            && a.starts_with('-')
            && !a.starts_with("--")
            && a[1..].chars().all(|c| c == 'v' || c == 'q');
        if short_count {
            continue;
        }
        let (name, inline_value) = match a.split_once('=') {
            Some((n, _)) => (n, true),
            None => (a.as_str(), false),
        };
        if let Some((_, takes_value)) = PER_TASK_FLAGS.iter().find(|(f, _)| *f == name) {
            skip_value = *takes_value && !inline_value;
            continue;
        }
        out.push(a.clone());
    }
    out
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

    #[test]
    fn shards_of_one_run_share_a_run_key() {
        let with = |args: &[&str]| {
            let mut l = Lineage::new("sample-rollouts", "0.1.0", Artifact::Rollouts);
            l.args = args.iter().map(|s| s.to_string()).collect();
            l
        };
        let a = with(&[
            "--out",
            "o",
            "--shard-index",
            "0",
            "--num-shards=2",
            "-vv",
            "--threads",
            "2",
        ]);
        let b = with(&[
            "--out",
            "o",
            "--shard-index=1",
            "--num-shards",
            "2",
            "--no-progress",
            "--tensorboard",
            "/runs/x/live/tb",
            "--live-metrics=/elsewhere",
        ]);
        assert_eq!(a.run_key(), b.run_key());
        let c = with(&["--out", "o", "--iteration", "2", "--shard-index", "1"]);
        assert_ne!(a.run_key(), c.run_key());
        assert!(
            a.run_difference(&c).contains("--iteration 2"),
            "{}",
            a.run_difference(&c)
        );
    }
}
