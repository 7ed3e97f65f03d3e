//! Reward models: one frozen base in memory with every reward adapter (LoRA + score head)
//! attached under its own name; a rollout's raw score is the head value at its last token
//! (`rlhf_nn::scoring::last_token_scores`), normalised with the constants train-rm-lora
//! stored in the adapter's `rlhf_state.json`: `reward = (raw + reward_bias) * reward_scale`.
//!
//! Rollouts must carry the reward model's tokenizer (their lineage's tokenizer hash is
//! compared with the base model's tokenizer.json); with `--retokenize` the prompt and
//! response text are encoded again with the reward model's tokenizer instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::error::CoreError;
use rlhf_core::lineage::Lineage;
use rlhf_core::records::RolloutRow;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::Model;
use tch::{Device, Kind};

use crate::settings::{RewardModelSpec, Settings};

/// File name of the reward normalisation and training state in an adapter folder.
pub const STATE_FILE: &str = "rlhf_state.json";

/// Normalisation constants of one reward adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    pub bias: f64,
    pub scale: f64,
}

impl Normalisation {
    /// No change.
    pub const IDENTITY: Normalisation = Normalisation {
        bias: 0.0,
        scale: 1.0,
    };

    /// `(raw + bias) * scale`.
    pub fn apply(&self, raw: f32) -> f32 {
        ((raw as f64 + self.bias) * self.scale) as f32
    }
}

/// What score-rewards needs from `rlhf_state.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardState {
    pub norm: Normalisation,
    /// Hash of the tokenizer the adapter was trained with.
    pub tokenizer_hash: Option<String>,
    /// Content hash of the base weights it was trained on.
    pub base_id: Option<String>,
    /// True when the folder holds a fully tuned model rather than an adapter.
    pub full: bool,
}

impl RewardState {
    /// Reads `dir/rlhf_state.json`; a folder without one is used unnormalised (with a
    /// warning), e.g. an adapter trained by another tool.
    pub fn read(dir: &Path) -> Result<RewardState> {
        let path = dir.join(STATE_FILE);
        if !path.is_file() {
            tracing::warn!(
                "{}: no {STATE_FILE}; using raw reward-model scores (no normalisation)",
                dir.display()
            );
            return Ok(RewardState {
                norm: Normalisation::IDENTITY,
                tokenizer_hash: None,
                base_id: None,
                full: false,
            });
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
                path: path.clone(),
                row: None,
                message: format!("invalid JSON: {e}"),
            })?;
        let number = |key: &str, default: f64| -> Result<f64> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                    CoreError::BadInput {
                        path: path.clone(),
                        row: None,
                        message: format!("`{key}` is {x}, expected a finite number"),
                    }
                    .into()
                }),
            }
        };
        let text_of = |key: &str| v.get(key).and_then(|x| x.as_str()).map(String::from);
        Ok(RewardState {
            norm: Normalisation {
                bias: number("reward_bias", 0.0)?,
                scale: number("reward_scale", 1.0)?,
            },
            tokenizer_hash: text_of("tokenizer_hash"),
            base_id: text_of("base_id"),
            full: v.get("full").and_then(|x| x.as_bool()).unwrap_or(false),
        })
    }
}

/// One attached reward adapter.
#[derive(Debug, Clone)]
pub struct Member {
    /// Adapter name inside the model.
    pub name: String,
    pub dir: PathBuf,
    pub norm: Normalisation,
}

/// The base model with its reward adapters.
pub struct RewardModels {
    model: Model,
    tokenizer: Tokenizer,
    model_dir: PathBuf,
    members: Vec<Member>,
    retokenize: bool,
    device: Device,
}

impl RewardModels {
    /// Checks tokenizers, loads the base once and attaches every reward adapter.
    /// `rollouts_name`/`rollouts_tokenizer` describe the rollouts for error messages.
    pub fn load(
        settings: &Settings,
        model_dir: &Path,
        rollouts_name: &str,
        rollouts_tokenizer: Option<&str>,
    ) -> Result<RewardModels> {
        let tokenizer = Tokenizer::from_dir(model_dir)?;
        let model_name = format!("reward model base {} (tokenizer.json)", model_dir.display());
        if settings.retokenize {
            if rollouts_tokenizer.is_some_and(|h| h != tokenizer.hash()) {
                tracing::info!("--retokenize: encoding rollout text with {model_name}");
            }
        } else {
            match rollouts_tokenizer {
                Some(h) => Lineage::check_tokenizer(rollouts_name, Some(h), &model_name, tokenizer.hash())
                    .map_err(|e| anyhow::Error::new(e).context("refusing to score token ids made by another tokenizer (--retokenize encodes the text with the reward model's tokenizer instead)"))?,
                None => tracing::warn!(
                    "{rollouts_name} records no tokenizer; trusting its token ids (use --retokenize to encode the text)"
                ),
            }
        }
        let states = settings
            .reward_models
            .iter()
            .map(|rm| RewardState::read(&rm.dir).map(|s| (rm, s)))
            .collect::<Result<Vec<_>>>()?;
        for (rm, s) in &states {
            if s.full {
                return Err(CoreError::BadInput {
                    path: rm.dir.clone(),
                    row: None,
                    message:
                        "a fully tuned reward model (train-rm-lora --full) is not an adapter; \
                              score-rewards scores LoRA reward adapters on --model"
                            .into(),
                }
                .into());
            }
            if let Some(h) = &s.tokenizer_hash {
                Lineage::check_tokenizer(
                    &format!("reward adapter {} ({STATE_FILE})", rm.dir.display()),
                    Some(h),
                    &model_name,
                    tokenizer.hash(),
                )
                .context("the reward adapter was trained on a base with another tokenizer")?;
            }
        }
        let mut model = Model::load(model_dir, settings.device, settings.kind)
            .with_context(|| format!("loading base model {}", model_dir.display()))?;
        let base_id = model.base_id();
        let mut members = Vec::new();
        for (k, (rm, s)) in states.iter().enumerate() {
            if let Some(b) = &s.base_id {
                if *b != base_id {
                    return Err(CoreError::Mismatch {
                        what: "base model",
                        left_name: format!(
                            "reward adapter {} ({STATE_FILE} base_id)",
                            rm.dir.display()
                        ),
                        left: b.clone(),
                        right_name: format!("--model {}", model_dir.display()),
                        right: base_id.clone(),
                        hint: "give the base model the reward adapter was trained on".into(),
                    }
                    .into());
                }
            }
            let name = format!("reward{k}");
            model
                .load_adapter(&name, &rm.dir)
                .with_context(|| format!("loading reward adapter {}", rm.dir.display()))?;
            if !model.adapter_has_head(&name)? {
                return Err(CoreError::BadInput {
                    path: rm.dir.clone(),
                    row: None,
                    message: "the adapter has no score head: not a reward model".into(),
                }
                .into());
            }
            members.push(Member {
                name,
                dir: rm.dir.clone(),
                norm: s.norm,
            });
        }
        Ok(RewardModels {
            device: settings.device,
            model,
            tokenizer,
            model_dir: model_dir.to_path_buf(),
            members,
            retokenize: settings.retokenize,
        })
    }

    /// The reward-model tokenizer hash (recorded in the scores lineage).
    pub fn tokenizer_hash(&self) -> &str {
        self.tokenizer.hash()
    }

    /// The members, in column order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Token ids to score for a rollout.
    fn sequence(&self, row: &RolloutRow) -> Result<(Vec<i32>, Vec<i32>)> {
        if self.retokenize {
            let p = self.tokenizer.encode(&row.prompt, true)?;
            let mut r = self.tokenizer.encode(&row.response, false)?;
            if row.finish_reason == "eos" {
                if let Some(e) = self.tokenizer.eos_id() {
                    r.push(e as i32);
                }
            }
            Ok((p, r))
        } else {
            Ok((row.prompt_tokens.clone(), row.response_tokens.clone()))
        }
    }

    /// Normalised scores of `rows` (one forward batch): `[member][row]`. `source` names the
    /// rollouts in errors.
    pub fn score(&self, rows: &[&RolloutRow], source: &Path) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let max = self.model.config().max_position_embeddings as usize;
        let vocab = self.model.config().vocab_size as i32;
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            let (p, r) = self.sequence(row)?;
            if p.len() + r.len() > max || p.len() + r.len() == 0 {
                return Err(CoreError::BadInput {
                    path: source.to_path_buf(),
                    row: None,
                    message: format!(
                        "rollout `{}` has {} tokens; the reward model {} takes 1 to {max}",
                        row.rollout_id,
                        p.len() + r.len(),
                        self.model_dir.display()
                    ),
                }
                .into());
            }
            if let Some(t) = p.iter().chain(&r).find(|&&t| t < 0 || t >= vocab) {
                return Err(CoreError::BadInput {
                    path: source.to_path_buf(),
                    row: None,
                    message: format!(
                        "rollout `{}`: token id {t} is outside the reward model's vocabulary of \
                         {vocab} (hint: --retokenize)",
                        row.rollout_id
                    ),
                }
                .into());
            }
            seqs.push((p, r));
        }
        let batch = SeqBatch::new(&seqs, self.tokenizer.pad_id as i32, self.device)?;
        let mut out = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let raw =
                rlhf_nn::scoring::last_token_scores(&self.model, Some(&m.name), &batch, false)?;
            let raw: Vec<f32> =
                Vec::<f32>::try_from(raw.to_kind(Kind::Float).to_device(Device::Cpu))
                    .context("reading reward-model scores")?;
            out.push(raw.into_iter().map(|x| m.norm.apply(x)).collect());
        }
        Ok(out)
    }
}

/// Reward-model specs in column order (for callers that only need names and weights).
pub fn columns(specs: &[RewardModelSpec]) -> Vec<(String, f32)> {
    specs.iter().map(|s| (s.column.clone(), s.weight)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_gives_the_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"format_version": 1, "reward_bias": -2.0, "reward_scale": 0.5, "tokenizer_hash": "abc", "base_id": "b1", "full": false}"#,
        )
        .unwrap();
        let s = RewardState::read(dir.path()).unwrap();
        assert_eq!(
            s.norm,
            Normalisation {
                bias: -2.0,
                scale: 0.5
            }
        );
        assert_eq!(s.norm.apply(4.0), 1.0);
        assert_eq!(s.tokenizer_hash.as_deref(), Some("abc"));
        std::fs::write(dir.path().join(STATE_FILE), r#"{"reward_bias": "x"}"#).unwrap();
        let err = RewardState::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`reward_bias`"), "{err}");
        std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(
            RewardState::read(dir.path()).unwrap().norm,
            Normalisation::IDENTITY
        );
    }
}
