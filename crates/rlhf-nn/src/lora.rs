//! LoRA adapters (Hu et al. 2021, <https://arxiv.org/abs/2106.09685>) on a frozen, shared
//! base: `y = W x + scale * B A dropout(x)` with A (r, in) random, B (out, r) zero, so a fresh
//! adapter reproduces the base exactly. `scale = alpha / r`, or `alpha / sqrt(r)` with rsLoRA
//! (Kalajdzievski 2023). An adapter may carry a scalar head (reward or value), stored like
//! transformers' `score` layer of *ForSequenceClassification: weight (1, hidden), no bias.
//!
//! Adapter weights (and heads) are kept in f32 whatever the base dtype; they require grad.

use tch::{Device, Kind, Tensor};

use crate::config::Arch;
use crate::error::{NnError, Result};

/// LoRA hyper-parameters (PEFT's LoraConfig fields of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub r: i64,
    /// lora_alpha.
    pub alpha: f64,
    /// lora_dropout, applied to the adapter input in training forwards only.
    pub dropout: f64,
    /// Module names (matched on the last path components, as PEFT does); `all-linear` for
    /// every linear layer of the blocks (not the LM head, as in PEFT); `lm_head` for the LM
    /// head of a model whose head is not tied to the input embedding.
    pub target_modules: Vec<String>,
    /// rsLoRA: scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// Defaults: r 8, alpha 16, dropout 0.05; q_proj,v_proj for Llama, c_attn for GPT-2.
    pub fn default_for(arch: Arch) -> Self {
        let targets: &[&str] = match arch {
            Arch::Llama => &["q_proj", "v_proj"],
            Arch::Gpt2 => &["c_attn"],
        };
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }

    /// The factor applied to `B A x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks rank, alpha, dropout and targets.
    pub fn validate(&self) -> Result<()> {
        if self.r <= 0 {
            return Err(NnError::Argument(format!(
                "LoRA rank must be positive, found {}",
                self.r
            )));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(NnError::Argument(format!(
                "LoRA alpha must be positive, found {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(NnError::Argument(format!(
                "LoRA dropout must be in [0, 1), found {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(NnError::Argument("LoRA target modules: none given".into()));
        }
        Ok(())
    }

    /// True when the module at HF path `name` is targeted (`all-linear` matches every block
    /// linear, not the LM head `lm_head`, which is targeted only by name).
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| Self::selects(t, name))
    }

    /// True when the one target entry `target` selects the module at HF path `name`.
    pub fn selects(target: &str, name: &str) -> bool {
        (target == "all-linear" && name != crate::model::LM_HEAD)
            || name == target
            || name.ends_with(&format!(".{target}"))
    }

    /// True when `lm_head` is among the targets.
    pub fn targets_lm_head(&self) -> bool {
        self.target_modules
            .iter()
            .any(|t| t == crate::model::LM_HEAD)
    }
}

/// What a head predicts. Both are stored as `score` (1, hidden); the kind only sets the
/// initialisation (Score: normal std 1/sqrt(hidden); Value: zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// Reward model score.
    Score,
    /// PPO critic value.
    Value,
}

/// One module's LoRA factors.
pub struct LoraPair {
    /// (r, in), f32.
    pub a: Tensor,
    /// (out, r), f32.
    pub b: Tensor,
}

/// A scalar head: weight (1, hidden), f32.
pub struct Head {
    /// Score or value.
    pub kind: HeadKind,
    /// (1, hidden).
    pub weight: Tensor,
}

impl Head {
    /// `hidden` (b, s, h) -> (b, s) in f32.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        hidden
            .to_kind(Kind::Float)
            .linear::<Tensor>(&self.weight, None)
            .squeeze_dim(-1)
    }
}

/// A named adapter attached to a model.
pub struct Adapter {
    /// Hyper-parameters.
    pub config: LoraConfig,
    /// `config.scale()`.
    pub scale: f64,
    /// One entry per base linear (by its id), Some where targeted.
    pub pairs: Vec<Option<LoraPair>>,
    /// Optional scalar head.
    pub head: Option<Head>,
}

impl Adapter {
    pub(crate) fn pair(&self, id: usize) -> Option<&LoraPair> {
        self.pairs.get(id).and_then(Option::as_ref)
    }

    /// Trainable tensors in a stable order, named as in the PEFT file (without the
    /// `base_model.model.` prefix), e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub(crate) fn named(&self, module_names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (id, pair) in self.pairs.iter().enumerate() {
            if let Some(p) = pair {
                out.push((
                    format!("{}.lora_A.weight", module_names[id]),
                    p.a.shallow_clone(),
                ));
                out.push((
                    format!("{}.lora_B.weight", module_names[id]),
                    p.b.shallow_clone(),
                ));
            }
        }
        if let Some(h) = &self.head {
            out.push(("score.weight".to_string(), h.weight.shallow_clone()));
        }
        out
    }
}

/// The LoRA delta `scale * B @ A` (out, in) for one module, in f32.
pub fn delta_weight(pair: &LoraPair, scale: f64) -> Tensor {
    pair.b
        .to_kind(Kind::Float)
        .matmul(&pair.a.to_kind(Kind::Float))
        * scale
}

/// Moves `t` to `device` as an f32 leaf that requires grad.
pub(crate) fn trainable(t: Tensor, device: Device) -> Tensor {
    t.to_device(device)
        .to_kind(Kind::Float)
        .detach()
        .set_requires_grad(true)
}
