//! `rlhf_state.json`: our training state beside the PEFT files of a reward adapter folder.
//!
//! score-rewards reads it to turn raw head outputs into rewards:
//!
//! ```text
//! reward = (raw + reward_bias) * reward_scale
//! ```
//!
//! `reward_bias = -mean(raw)` over the reference set (Stiennon et al. 2020: rewards on the
//! reference responses have mean 0); `reward_scale = 1 / std(raw)` with --normalize-scale,
//! else 1. `base_id` and `tokenizer_hash` identify the base model the adapter was trained
//! on, so a consumer can refuse another base. An ensemble folder holds `ensemble.json`
//! (`{"members": ["member-0", ...]}`) and one complete adapter folder per member.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// File name of the training state in an adapter folder.
pub const STATE_FILE: &str = "rlhf_state.json";
/// File name of the ensemble index in an ensemble folder.
pub const ENSEMBLE_FILE: &str = "ensemble.json";
/// Layout version of [`RewardState`].
pub const STATE_VERSION: u32 = 1;

/// Where the normalisation constants came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Description of the reference set.
    pub source: String,
    /// Number of reference sequences scored.
    pub count: usize,
    /// Mean raw score on it.
    pub raw_mean: f64,
    /// Standard deviation of raw scores on it.
    pub raw_std: f64,
}

/// The content of `rlhf_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardState {
    pub format_version: u32,
    /// "reward_model".
    pub kind: String,
    /// How to apply the constants, spelled out for readers of the file.
    pub reward_formula: String,
    pub reward_bias: f64,
    pub reward_scale: f64,
    /// Content hash of the base weights.
    pub base_id: String,
    /// Hash of the base model's tokenizer.json.
    pub tokenizer_hash: String,
    /// The base model folder as given on the command line.
    pub base_model: String,
    /// LoRA adapter, or a fully tuned model (--full).
    pub full: bool,
    /// Optimiser steps trained.
    pub steps: u64,
    /// Ensemble member index (0 for a single model) and ensemble size.
    pub member: usize,
    pub ensemble_size: usize,
    pub reference: Reference,
    /// Final eval figures (metric name -> value).
    pub eval: std::collections::BTreeMap<String, f64>,
}

impl RewardState {
    /// Normalisation constants from raw reference scores.
    pub fn constants(raw: &[f64], with_scale: bool) -> (f64, f64, f64, f64) {
        let (mean, std) = crate::quality::mean_std(raw.iter().copied());
        let scale = if with_scale && std > 1e-12 {
            1.0 / std
        } else {
            1.0
        };
        (-mean, scale, mean, std)
    }

    /// Applies the normalisation to a raw score.
    pub fn apply(&self, raw: f64) -> f64 {
        (raw + self.reward_bias) * self.reward_scale
    }

    /// Writes the file into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// Reads the file from `dir`.
    pub fn read(dir: &Path) -> Result<RewardState> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The content of `ensemble.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleIndex {
    /// Member folder names relative to the ensemble folder.
    pub members: Vec<String>,
    /// How members were trained.
    pub resampling: String,
}

/// Folder name of ensemble member `k`.
pub fn member_dir_name(k: usize) -> String {
    format!("member-{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_gives_mean_zero_and_unit_std() {
        let raw = [1.0, 2.0, 3.0, 6.0];
        let (bias, scale, mean, std) = RewardState::constants(&raw, true);
        assert_eq!(mean, 3.0);
        assert_eq!(bias, -3.0);
        let mut s = RewardState {
            format_version: STATE_VERSION,
            kind: "reward_model".into(),
            reward_formula: String::new(),
            reward_bias: bias,
            reward_scale: scale,
            base_id: "b".into(),
            tokenizer_hash: "t".into(),
            base_model: "m".into(),
            full: false,
            steps: 3,
            member: 0,
            ensemble_size: 1,
            reference: Reference {
                source: "x".into(),
                count: 4,
                raw_mean: mean,
                raw_std: std,
            },
            eval: Default::default(),
        };
        let out: Vec<f64> = raw.iter().map(|&r| s.apply(r)).collect();
        let (m, sd) = crate::quality::mean_std(out.iter().copied());
        assert!(m.abs() < 1e-12 && (sd - 1.0).abs() < 1e-12, "{m} {sd}");
        let dir = tempfile::tempdir().unwrap();
        s.eval.insert("accuracy".into(), 0.75);
        s.write(dir.path()).unwrap();
        // serde_json's default float parser may differ in the last ulp.
        let back = RewardState::read(dir.path()).unwrap();
        assert!((back.reference.raw_std - s.reference.raw_std).abs() < 1e-12);
        assert_eq!(back.reward_bias, s.reward_bias);
        assert_eq!(back.eval, s.eval);
        assert_eq!(back.base_id, s.base_id);
        let (_, scale, _, _) = RewardState::constants(&raw, false);
        assert_eq!(scale, 1.0);
    }
}
