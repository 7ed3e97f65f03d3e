//! The training state ppo-update keeps beside the policy adapter in its output folder, so
//! the next iteration continues where this one stopped: optimiser moments
//! (`optimizer.safetensors`, `critic_optimizer.safetensors`), the critic adapter
//! (`critic/`), and `training_state.json` (step count for the learning-rate schedule, the
//! KL controller's state, the algorithm and settings it was made with). PEFT ignores these
//! files when it loads the adapter. With --full the same files sit beside the full model's
//! weights (config.json, model.safetensors), which transformers likewise ignores.

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_algo::kl_control::KlController;
use rlhf_algo::optim::AdamWConfig;
use rlhf_algo::schedule::Schedule;
use rlhf_core::CoreError;

use crate::args::Algo;

/// JSON state file.
pub const STATE_FILE: &str = "training_state.json";
/// Policy optimiser moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Critic optimiser moments.
pub const CRITIC_OPTIMIZER_FILE: &str = "critic_optimizer.safetensors";
/// Critic adapter sub-folder (PEFT layout, value head as `score`).
pub const CRITIC_DIR: &str = "critic";
/// Metrics of the iteration.
pub const METRICS_FILE: &str = "metrics.parquet";
/// Version of the state layout.
pub const STATE_VERSION: u32 = 1;

/// What `training_state.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingState {
    pub format_version: u32,
    pub producer: String,
    pub algo: Algo,
    /// Iteration that produced this adapter.
    pub iteration: i32,
    /// Optimiser steps taken over all iterations (drives the learning-rate schedule).
    pub optimizer_steps: u64,
    /// Rollouts trained on over all iterations.
    pub rollouts_seen: u64,
    /// KL controller after this iteration's update (the next iteration's beta).
    pub kl_controller: KlController,
    /// Content hash of the frozen base the adapter belongs to; with --full, of the policy
    /// weights saved beside this file (the ones the optimiser moments belong to).
    pub base_id: String,
    /// Full fine-tuning (--full): the folder is a whole model, not an adapter. Written only
    /// when true, so LoRA state files are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// Content hash of the reference model (--full): the KL anchor and the critic's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
}

impl TrainingState {
    /// Reads the state beside an adapter; `None` when the folder has none (an adapter
    /// trained elsewhere, e.g. by train-sft or peft).
    pub fn read(dir: &Path) -> Result<Option<TrainingState>> {
        let path = dir.join(STATE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let state: TrainingState =
            serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
                path: path.clone(),
                row: None,
                message: format!("not a ppo-update training state: {e}"),
            })?;
        if state.format_version != STATE_VERSION {
            return Err(CoreError::BadInput {
                path,
                row: None,
                message: format!(
                    "training state version {} is not supported (expected {STATE_VERSION})",
                    state.format_version
                ),
            }
            .into());
        }
        Ok(Some(state))
    }

    /// Writes the state as pretty JSON (deterministic key order).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TrainingState::read(dir.path()).unwrap().is_none());
        let s = TrainingState {
            format_version: STATE_VERSION,
            producer: "ppo-update".into(),
            algo: Algo::Rloo,
            iteration: 2,
            optimizer_steps: 8,
            rollouts_seen: 64,
            kl_controller: KlController::adaptive(0.1, 6.0, 1000.0).unwrap(),
            base_id: "abc".into(),
            full: false,
            ref_id: None,
            schedule: Schedule::constant(1e-4),
            adamw: AdamWConfig::default(),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(TrainingState::read(dir.path()).unwrap(), Some(s.clone()));
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(
            !text.contains("full") && !text.contains("ref_id"),
            "LoRA state files keep their layout: {text}"
        );
        let full = TrainingState {
            full: true,
            ref_id: Some("def".into()),
            ..s.clone()
        };
        let other = tempfile::tempdir().unwrap();
        full.write(other.path()).unwrap();
        assert_eq!(TrainingState::read(other.path()).unwrap(), Some(full));
        std::fs::write(
            dir.path().join(STATE_FILE),
            text.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .unwrap();
        let e = format!("{:#}", TrainingState::read(dir.path()).unwrap_err());
        assert!(e.contains("version 9 is not supported"), "{e}");
    }
}
