//! Where the policy, the reference and the critic live, and how they are loaded.
//!
//! - LoRA (the default, PERL): one frozen base in memory with the policy adapter and the
//!   critic adapter on it; the reference policy is the same base with the adapter switched
//!   off. No second copy of the weights exists.
//! - `--full` (the baseline PERL compares with): the policy is a whole model whose every
//!   weight trains, so the reference can no longer be "adapter off". It is a second, frozen
//!   copy loaded from `--ref-model` (exactly the memory cost PERL avoids), and the critic's
//!   LoRA adapter and value head sit on that frozen copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rlhf_core::CoreError;
use rlhf_nn::{HeadKind, LoraConfig, Model};
use tch::{Device, Tensor};

use crate::data::Data;
use crate::prepare::{CRITIC, POLICY};
use crate::settings::Settings;
use crate::state::{TrainingState, CRITIC_DIR, STATE_FILE};

/// The models of one iteration.
pub struct Models {
    /// LoRA: the frozen base carrying the policy (and critic) adapters. --full: the policy
    /// itself, every base weight trainable, no adapter.
    pub policy: Model,
    /// --full only: the frozen reference copy, carrying the critic adapter.
    pub reference: Option<Model>,
}

impl Models {
    /// True for --full.
    pub fn is_full(&self) -> bool {
        self.reference.is_some()
    }

    /// The adapter the policy runs with (None with --full: the whole model is the policy).
    pub fn policy_adapter(&self) -> Option<&'static str> {
        (!self.is_full()).then_some(POLICY)
    }

    /// The model whose base (run with `adapter: None`) is the reference policy.
    pub fn reference(&self) -> &Model {
        self.reference.as_ref().unwrap_or(&self.policy)
    }

    /// The model carrying the critic adapter.
    ///
    /// With --full the critic must not sit on the policy model: the policy's base weights
    /// require grad, so the value loss's backward pass would put critic gradients into them
    /// and mix them into the policy's AdamW step. On the frozen reference copy autograd
    /// reaches only the critic's LoRA factors and value head. The critic then reads the
    /// fixed reference's features, as in LoRA mode, where its adapter sits on the frozen base
    /// and never sees the policy adapter.
    pub fn critic_model(&self) -> &Model {
        self.reference()
    }

    fn critic_model_mut(&mut self) -> &mut Model {
        match self.reference.as_mut() {
            Some(r) => r,
            None => &mut self.policy,
        }
    }

    /// The device the models run on.
    pub fn device(&self) -> Device {
        self.policy.device()
    }

    /// The policy's trainable tensors, named: the LoRA factors, or with --full every base
    /// weight (names as [`Model::base_parameters`] gives them).
    pub fn policy_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self.policy_adapter() {
            Some(name) => self.policy.adapter_named_parameters(name)?,
            None => self.policy.base_parameters(),
        })
    }

    /// The critic's trainable tensors (LoRA factors and value head), named.
    pub fn critic_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.critic_model().adapter_named_parameters(CRITIC)?)
    }
}

/// What loading found.
pub struct Loaded {
    pub models: Models,
    /// The training state of the previous iteration (beside --adapter, or beside the
    /// weights in --model with --full), if any.
    pub prev_state: Option<TrainingState>,
    /// The folder the critic continues from (None: a fresh critic, or --critic-init).
    pub critic_dir: Option<PathBuf>,
    /// Content hash of --model's weights as loaded (the frozen base, or the policy's
    /// starting weights with --full).
    pub base_id: String,
    /// Content hash of the reference copy (--full).
    pub ref_id: Option<String>,
    /// False when the rollouts name another sampling policy than --adapter, or with --full:
    /// their log-probs are then never taken as the old ones.
    pub sampled_by_this_policy: bool,
}

/// The LoRA configuration of a fresh adapter from the --lora-* flags.
pub fn lora_config(s: &Settings, model: &Model) -> LoraConfig {
    s.lora.config(model.config().arch)
}

fn load_model(dir: &Path, s: &Settings, what: &str) -> Result<Model> {
    Model::load(dir, s.device, s.kind).with_context(|| format!("loading {what} {}", dir.display()))
}

/// The reference must speak the policy's vocabulary: same architecture, vocabulary size
/// and (when both folders have one) tokenizer.
fn check_reference(policy: &Model, reference: &Model, s: &Settings) -> Result<()> {
    let ref_dir = s.ref_model.as_deref().unwrap_or(&s.model_dir);
    let (p, r) = (policy.config(), reference.config());
    if p.arch != r.arch || p.vocab_size != r.vocab_size {
        bail!(CoreError::Mismatch {
            what: "model family",
            left_name: s.model_dir.display().to_string(),
            left: format!("{:?} with a vocabulary of {}", p.arch, p.vocab_size),
            right_name: ref_dir.display().to_string(),
            right: format!("{:?} with a vocabulary of {}", r.arch, r.vocab_size),
            hint: "--ref-model must be the model the policy was tuned from (the SFT model)".into(),
        });
    }
    let tok = |d: &Path| -> Result<Option<String>> {
        if d.join("tokenizer.json").is_file() {
            Ok(Some(
                rlhf_core::tokenizer::Tokenizer::from_dir(d)?
                    .hash()
                    .to_string(),
            ))
        } else {
            Ok(None)
        }
    };
    if let (Some(a), Some(b)) = (tok(&s.model_dir)?, tok(ref_dir)?) {
        if a != b {
            bail!(CoreError::Mismatch {
                what: "tokenizer",
                left_name: s.model_dir.display().to_string(),
                left: a,
                right_name: ref_dir.display().to_string(),
                right: b,
                hint: "--ref-model must be the model the policy was tuned from (the SFT model)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Loads the policy, the reference (--full) and the critic with the previous iteration's
/// state, checking that the state belongs to these weights.
pub fn load(s: &Settings, data: &Data) -> Result<Loaded> {
    let prev_state = match s.state_dir() {
        Some(dir) => TrainingState::read(dir)?,
        None => None,
    };
    if let Some(dir) = &s.adapter {
        rlhf_core::adapter_meta::check_kind(
            "--adapter",
            dir,
            rlhf_core::adapter_meta::AdapterKind::Policy,
        )?;
    }
    let mut sampled_by_this_policy = !s.full;
    if let (Some(dir), false, false) = (&s.adapter, data.policy_ids.is_empty(), s.full) {
        let id = rlhf_core::adapter_meta::content_id(dir)?;
        if data.policy_ids.iter().any(|p| *p != id) {
            sampled_by_this_policy = false;
        }
        if !data.policy_ids.contains(&id) {
            tracing::warn!(
                adapter = %dir.display(),
                sampled_by = ?data.policy_ids,
                "the rollouts were sampled by another policy than --adapter: the update is off-policy (see sampler_ratio_* metrics)"
            );
        }
    }
    let what = if s.full { "policy model" } else { "base model" };
    let mut policy = load_model(&s.model_dir, s, what)?;
    let base_id = policy.base_id();
    if let Some(st) = &prev_state {
        let state_path = s.model_dir.join(STATE_FILE);
        if s.full && !st.full {
            bail!(CoreError::BadInput {
                path: state_path,
                row: None,
                message: "a LoRA training state beside full model weights; --full continues only from a `ppo-update --full` output".into(),
            });
        }
        if st.base_id != base_id {
            let (what, left_name, hint) = if s.full {
                (
                    "policy weights",
                    state_path.display().to_string(),
                    "the weights are not the ones ppo-update saved with this state (changed since, or another --dtype); restore them or start from a folder without training_state.json",
                )
            } else {
                (
                    "base model",
                    s.adapter
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    "pass the --model the adapter was trained on",
                )
            };
            bail!(CoreError::Mismatch {
                what,
                left_name,
                left: st.base_id.clone(),
                right_name: s.model_dir.display().to_string(),
                right: base_id,
                hint: hint.into(),
            });
        }
    }
    let mut ref_id = None;
    let reference = match &s.ref_model {
        Some(dir) if s.full => {
            let r = load_model(dir, s, "reference model")?;
            check_reference(&policy, &r, s)?;
            let found = r.base_id();
            if let Some(want) = prev_state.as_ref().and_then(|st| st.ref_id.as_ref()) {
                if *want != found {
                    bail!(CoreError::Mismatch {
                        what: "reference model",
                        left_name: s.model_dir.join(STATE_FILE).display().to_string(),
                        left: want.clone(),
                        right_name: dir.display().to_string(),
                        right: found,
                        hint: "pass the --ref-model of the previous iterations (the KL anchor and the critic's base)".into(),
                    });
                }
            }
            ref_id = Some(found);
            policy.set_base_trainable(true);
            Some(r)
        }
        _ => None,
    };
    let mut models = Models { policy, reference };
    if !s.full {
        match &s.adapter {
            Some(dir) => models
                .policy
                .load_adapter(POLICY, dir)
                .with_context(|| format!("loading policy adapter {}", dir.display()))?,
            None => {
                let cfg = lora_config(s, &models.policy);
                models.policy.add_adapter(POLICY, &cfg, None, s.seed)?
            }
        }
    }

    let critic_dir = s.critic.clone().or_else(|| {
        s.state_dir()
            .map(|d| d.join(CRITIC_DIR))
            .filter(|d| d.join("adapter_config.json").is_file())
    });
    if s.algo.has_critic() {
        let critic = models.critic_model_mut();
        match (&critic_dir, &s.critic_init) {
            (Some(dir), _) => critic
                .load_adapter(CRITIC, dir)
                .with_context(|| format!("loading critic adapter {}", dir.display()))?,
            (None, Some(dir)) => {
                critic
                    .load_adapter(CRITIC, dir)
                    .with_context(|| format!("initialising the critic from {}", dir.display()))?;
                if !critic.adapter_has_head(CRITIC)? {
                    bail!(CoreError::BadInput {
                        path: dir.clone(),
                        row: None,
                        message: "--critic-init needs a reward adapter with a score head (modules_to_save: score)".into(),
                    });
                }
            }
            (None, None) => {
                let cfg = lora_config(s, critic);
                critic.add_adapter(CRITIC, &cfg, Some(HeadKind::Value), s.seed.wrapping_add(1))?
            }
        }
    }
    Ok(Loaded {
        models,
        prev_state,
        critic_dir,
        base_id,
        ref_id,
        sampled_by_this_policy,
    })
}

/// Writes a fully tuned policy into `dir` as a transformers model folder: config.json,
/// model.safetensors and the tokenizer files of `model_dir`.
pub fn save_full_policy(policy: &Model, model_dir: &Path, dir: &Path) -> Result<()> {
    policy
        .save_pretrained(dir)
        .with_context(|| format!("writing the policy model into {}", dir.display()))?;
    use rlhf_core::tokenizer::{copy_model_files, GENERATION_FILES, TOKENIZER_FILES};
    copy_model_files(model_dir, dir, TOKENIZER_FILES)?;
    copy_model_files(model_dir, dir, GENERATION_FILES)?;
    Ok(())
}
