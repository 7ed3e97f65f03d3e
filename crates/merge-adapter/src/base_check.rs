//! Lineage check: was the adapter trained on this base? Our training stages record the
//! base's content hash (`Model::base_id`) beside the adapter: `base_id` in rlhf_state.json
//! (train-rm-lora), training_state.json (ppo-update) or `extra.base_id` of lineage.json.
//! Shapes are checked anyway when the adapter is loaded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::CoreError;
use serde_json::Value;

/// Files that may record the base hash, in the order they are consulted.
pub const RECORD_FILES: [&str; 3] = ["rlhf_state.json", "training_state.json", "lineage.json"];

/// The base hash an adapter folder records, and the file it came from.
pub fn recorded_base_id(adapter: &Path) -> Result<Option<(String, PathBuf)>> {
    for name in RECORD_FILES {
        let path = adapter.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
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
pub fn check(adapter: &Path, base: &Path, actual: &str, force: bool) -> Result<BaseCheck> {
    let Some((recorded, file)) = recorded_base_id(adapter)? else {
        return Ok(BaseCheck::Unrecorded);
    };
    if recorded == actual {
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
        hint: "merge onto the model the adapter was trained on (for RLHF adapters: the SFT model), or pass --force to merge anyway".into(),
    }
    .into())
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
            check(d.path(), Path::new("b"), "1111", false).unwrap(),
            BaseCheck::Match
        );
        let err = check(d.path(), Path::new("sft"), "2222", false).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("base_id 1111") && text.contains("base_id 2222"),
            "{text}"
        );
        assert!(text.contains("--force"));
        assert!(rlhf_core::cli::exit_code_for(&err, &[]) == rlhf_core::cli::EXIT_BAD_INPUT);
        assert!(matches!(
            check(d.path(), Path::new("sft"), "2222", true).unwrap(),
            BaseCheck::Forced { .. }
        ));
    }
}
