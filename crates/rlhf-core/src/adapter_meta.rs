//! What an adapter folder says about itself, checked in every stage that loads one:
//! - its base: our training stages record the base's content hash (`Model::base_id`)
//!   beside the adapter: `base_id` in rlhf_state.json (train-rm-lora), training_state.json
//!   (ppo-update) or `extra.base_id` of lineage.json (train-sft). Shapes are checked anyway
//!   when the adapter is loaded;
//! - its kind: a reward adapter is PEFT `SEQ_CLS` (LoRA plus a score head), a policy
//!   adapter `CAUSAL_LM`;
//! - its content id: a hash of its weights and configuration, never of paths, so the
//!   same adapter gives the same `policy_id` wherever it lies.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{CoreError, Result};

/// Files that may record the base hash, in the order they are consulted.
pub const RECORD_FILES: [&str; 3] = ["rlhf_state.json", "training_state.json", "lineage.json"];

/// The base hash an adapter folder records, and the file it came from.
pub fn recorded_base_id(adapter: &Path) -> Result<Option<(String, PathBuf)>> {
    for name in RECORD_FILES {
        let path = adapter.join(name);
        if !path.is_file() {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| CoreError::io("reading", &path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
            path: path.clone(),
            row: None,
            message: format!("invalid JSON: {e}"),
        })?;
        let id = v
            .get("base_id")
            .or_else(|| v.get("extra").and_then(|e| e.get("base_id")))
            .and_then(Value::as_str);
        if let Some(id) = id {
            return Ok(Some((id.to_string(), path)));
        }
    }
    Ok(None)
}

/// What the check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseCheck {
    /// The recorded hash equals the base's.
    Match,
    /// No hash recorded (an adapter made by another tool): shapes only.
    Unrecorded,
    /// Mismatch overridden by --force.
    Forced { recorded: String, actual: String },
}

/// Compares the recorded hash with the base's; a mismatch is bad input unless `force`.
pub fn check_base(adapter: &Path, base: &Path, actual: &str, force: bool) -> Result<BaseCheck> {
    check_base_or(adapter, base, actual, force, || None)
}

/// [`check_base`] that also accepts the id `other` gives, computed only when the recorded
/// hash differs from `actual` (merge-adapter: the id of a bfloat16 load of the base it
/// loaded in float32).
pub fn check_base_or(
    adapter: &Path,
    base: &Path,
    actual: &str,
    force: bool,
    other: impl FnOnce() -> Option<String>,
) -> Result<BaseCheck> {
    let Some((recorded, file)) = recorded_base_id(adapter)? else {
        return Ok(BaseCheck::Unrecorded);
    };
    if recorded == actual || other().is_some_and(|o| o == recorded) {
        return Ok(BaseCheck::Match);
    }
    if force {
        return Ok(BaseCheck::Forced {
            recorded,
            actual: actual.to_string(),
        });
    }
    Err(CoreError::Mismatch {
        what: "base model",
        left_name: format!("adapter {} ({})", adapter.display(), file.display()),
        left: format!("base_id {recorded}"),
        right_name: format!("base {}", base.display()),
        right: format!("base_id {actual}"),
        hint: "use the model the adapter was trained on (for RLHF adapters: the SFT model)".into(),
    })
}

/// What an adapter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// A policy (PEFT task type CAUSAL_LM): sample-rollouts, ppo-update, merge to a causal LM.
    Policy,
    /// A reward model (PEFT task type SEQ_CLS with a score head): score-rewards.
    Reward,
}

impl AdapterKind {
    fn describe(self) -> &'static str {
        match self {
            AdapterKind::Policy => "a policy adapter (task_type CAUSAL_LM)",
            AdapterKind::Reward => "a reward adapter (task_type SEQ_CLS, with a score head)",
        }
    }
}

fn read_config(adapter: &Path) -> Result<Value> {
    let path = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io("reading", &path, e))?;
    serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
        path,
        row: None,
        message: format!("invalid JSON: {e}"),
    })
}

/// The kind of the adapter in `adapter` (from adapter_config.json's task_type); None when
/// it names none we know (the loader's shape and head checks still apply).
pub fn kind(adapter: &Path) -> Result<Option<AdapterKind>> {
    let cfg = read_config(adapter)?;
    Ok(match cfg.get("task_type").and_then(Value::as_str) {
        Some("SEQ_CLS") => Some(AdapterKind::Reward),
        Some("CAUSAL_LM") => Some(AdapterKind::Policy),
        _ => None,
    })
}

/// Refuses an adapter of another kind than `expected`, naming the flag it was given to.
pub fn check_kind(flag: &str, adapter: &Path, expected: AdapterKind) -> Result<()> {
    let Some(found) = kind(adapter)? else {
        return Ok(());
    };
    if found == expected {
        return Ok(());
    }
    Err(CoreError::BadInput {
        path: adapter.to_path_buf(),
        row: None,
        message: format!(
            "{flag} needs {}, but this is {}\n  hint: the reward model goes to \
             score-rewards --reward-model; the policy to --adapter",
            expected.describe(),
            found.describe()
        ),
    })
}

/// Checks the recorded base of `adapter` (given to `flag`) against the loaded base;
/// an adapter that records none (made by another tool) passes with a warning.
pub fn check_trained_on(flag: &str, adapter: &Path, base: &Path, actual: &str) -> Result<()> {
    match check_base(adapter, base, actual, false) {
        Ok(BaseCheck::Unrecorded) => {
            tracing::warn!(
                "{flag} {} records no base_id ({}): only tensor shapes are checked",
                adapter.display(),
                RECORD_FILES.join(", ")
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(CoreError::Mismatch {
            what,
            left_name,
            left,
            right_name,
            right,
            hint,
        }) => Err(CoreError::Mismatch {
            what,
            left_name: format!("{flag} {left_name}"),
            left,
            right_name,
            right,
            hint,
        }),
        Err(e) => Err(e),
    }
}

/// A content id (16 hex) of an adapter: its weights file(s) and its configuration without
/// `base_model_name_or_path` (a path). Equal adapters get equal ids in any folder.
pub fn content_id(adapter: &Path) -> Result<String> {
    let mut cfg = read_config(adapter)?;
    if let Some(o) = cfg.as_object_mut() {
        o.remove("base_model_name_or_path");
        o.remove("revision");
    }
    let mut h = blake3::Hasher::new();
    h.update(b"adapter/v1");
    h.update(cfg.to_string().as_bytes());
    let mut weights: Vec<PathBuf> = std::fs::read_dir(adapter)
        .map_err(|e| CoreError::io("listing", adapter, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("adapter_model") && !n.starts_with('.'))
        })
        .collect();
    weights.sort();
    for w in weights {
        let name = w
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        h.update(name.as_bytes());
        h.update(crate::hash::file_hash(&w)?.as_bytes());
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hash_in_any_record_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(recorded_base_id(d.path()).unwrap(), None);
        std::fs::write(
            d.path().join("lineage.json"),
            r#"{"extra": {"base_id": "aa"}}"#,
        )
        .unwrap();
        assert_eq!(recorded_base_id(d.path()).unwrap().unwrap().0, "aa");
        std::fs::write(d.path().join("training_state.json"), r#"{"base_id": "bb"}"#).unwrap();
        assert_eq!(recorded_base_id(d.path()).unwrap().unwrap().0, "bb");
    }

    #[test]
    fn mismatch_names_both_and_force_overrides() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("rlhf_state.json"), r#"{"base_id": "1111"}"#).unwrap();
        assert_eq!(
            check_base(d.path(), Path::new("b"), "1111", false).unwrap(),
            BaseCheck::Match
        );
        let err =
            anyhow::Error::new(check_base(d.path(), Path::new("sft"), "2222", false).unwrap_err());
        let text = format!("{err:#}");
        assert!(
            text.contains("base_id 1111") && text.contains("base_id 2222"),
            "{text}"
        );
        assert!(crate::cli::exit_code_for(&err, &[]) == crate::cli::EXIT_BAD_INPUT);
        assert!(matches!(
            check_base(d.path(), Path::new("sft"), "2222", true).unwrap(),
            BaseCheck::Forced { .. }
        ));
    }

    #[test]
    fn kind_and_content_id_ignore_paths() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("elsewhere/b"));
        for (dir, base) in [(&a, "/x/sft"), (&b, "../other/sft")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(
                dir.join("adapter_config.json"),
                format!(
                    r#"{{"task_type": "CAUSAL_LM", "r": 8, "base_model_name_or_path": "{base}"}}"#
                ),
            )
            .unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), b"weights").unwrap();
            std::fs::write(
                dir.join("lineage.json"),
                format!("{{\"args\": [\"{}\"]}}", dir.display()),
            )
            .unwrap();
        }
        assert_eq!(content_id(&a).unwrap(), content_id(&b).unwrap());
        std::fs::write(b.join("adapter_model.safetensors"), b"other").unwrap();
        assert_ne!(content_id(&a).unwrap(), content_id(&b).unwrap());
        assert_eq!(kind(&a).unwrap(), Some(AdapterKind::Policy));
        std::fs::write(a.join("adapter_config.json"), r#"{"task_type": "SEQ_CLS"}"#).unwrap();
        let e = check_kind("--adapter", &a, AdapterKind::Policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--adapter needs a policy adapter") && e.contains("reward adapter"),
            "{e}"
        );
    }
}
