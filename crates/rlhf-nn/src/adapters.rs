//! Attaching, listing, exposing and merging LoRA adapters on a [`Model`]. Several adapters
//! (policy, reward, critic) share one frozen base; each forward names the active one.

use tch::{Kind, Tensor};

use crate::error::{NnError, Result};
use crate::lora::{delta_weight, trainable, Adapter, Head, HeadKind, LoraConfig, LoraPair};
use crate::Model;

impl Model {
    /// Attaches a fresh adapter: A uniform(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform
    /// bound), B zero, so the adapter starts equal to the base. `head` adds a scalar head
    /// (Score: normal std 1/sqrt(hidden); Value: zeros). Draws come from `seed` on the CPU.
    /// Every named target must select a module. An adapter with a head never reads the LM
    /// head's output, so `lm_head` is left out of its targets (logged).
    pub fn add_adapter(
        &mut self,
        name: &str,
        cfg: &LoraConfig,
        head: Option<HeadKind>,
        seed: u64,
    ) -> Result<()> {
        cfg.validate()?;
        if self.adapters.contains_key(name) {
            return Err(NnError::Adapter {
                name: name.into(),
                message: "already attached".into(),
            });
        }
        let mut cfg = cfg.clone();
        if head.is_some() && cfg.targets_lm_head() {
            cfg.target_modules.retain(|t| t != crate::model::LM_HEAD);
            tracing::warn!(
                adapter = name,
                "LoRA target lm_head left out: an adapter with a score or value head never uses the LM head"
            );
            if cfg.target_modules.is_empty() {
                return Err(NnError::Argument(format!(
                    "adapter {name}: lm_head is its only LoRA target, and an adapter with a score or value head never uses the LM head; name other modules"
                )));
            }
        }
        let cfg = &cfg;
        self.check_lm_head_target(cfg)?;
        // every named target selects a module (so the adapter targets at least one)
        let linears = self.linears();
        let unmatched: Vec<&String> = cfg
            .target_modules
            .iter()
            .filter(|t| !linears.iter().any(|l| LoraConfig::selects(t, &l.name)))
            .collect();
        if !unmatched.is_empty() {
            return Err(NnError::Argument(format!(
                "LoRA target modules {unmatched:?} match no linear layer of this model; available: {}",
                self.module_kinds().join(", ")
            )));
        }
        let device = self.device();
        let mut pairs = Vec::new();
        for lin in linears {
            if cfg.targets(&lin.name) {
                let (inp, out) = (lin.in_features(), lin.out_features());
                let bound = 1.0 / (inp as f64).sqrt();
                let a = crate::rng::uniform_tensor(
                    seed,
                    &format!("{name}/{}.lora_A", lin.name),
                    &[cfg.r, inp],
                    bound,
                );
                let b = Tensor::zeros([out, cfg.r], (Kind::Float, tch::Device::Cpu));
                pairs.push(Some(LoraPair {
                    a: trainable(a, device),
                    b: trainable(b, device),
                }));
            } else {
                pairs.push(None);
            }
        }
        let head = head.map(|kind| {
            let h = self.cfg.hidden_size;
            let w = match kind {
                HeadKind::Score => crate::rng::normal_tensor(
                    seed,
                    &format!("{name}/score"),
                    &[1, h],
                    1.0 / (h as f64).sqrt(),
                ),
                HeadKind::Value => Tensor::zeros([1, h], (Kind::Float, tch::Device::Cpu)),
            };
            Head {
                kind,
                weight: trainable(w, device),
            }
        });
        self.adapters.insert(
            name.to_string(),
            Adapter {
                config: cfg.clone(),
                scale: cfg.scale(),
                pairs,
                head,
            },
        );
        Ok(())
    }

    /// An adapter may target `lm_head` only where the head is a module of its own: a head
    /// tied to the input embedding would change the embedding too when merged.
    pub(crate) fn check_lm_head_target(&self, cfg: &LoraConfig) -> Result<()> {
        if cfg.targets_lm_head() && !self.has_untied_lm_head() {
            return Err(NnError::Argument(
                "LoRA target `lm_head`: this model has no LM head of its own (tie_word_embeddings \
                 is true, or it is a sequence-classification checkpoint); leave lm_head out"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The distinct last components of the linear module names (q_proj, c_attn, ...).
    pub fn module_kinds(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .module_names
            .iter()
            .map(|n| n.rsplit('.').next().unwrap_or(n).to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Names of the attached adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// True when `name` is attached.
    pub fn has_adapter(&self, name: &str) -> bool {
        self.adapters.contains_key(name)
    }

    /// The adapter's LoRA configuration.
    pub fn adapter_config(&self, name: &str) -> Result<&LoraConfig> {
        Ok(&self.adapter(name)?.config)
    }

    /// True when the adapter carries a scalar head.
    pub fn adapter_has_head(&self, name: &str) -> Result<bool> {
        Ok(self.adapter(name)?.head.is_some())
    }

    /// Detaches an adapter.
    pub fn remove_adapter(&mut self, name: &str) -> Result<()> {
        self.adapter(name)?;
        self.adapters.remove(name);
        Ok(())
    }

    /// The adapter's trainable tensors (shared handles), in a stable order.
    pub fn adapter_parameters(&self, name: &str) -> Result<Vec<Tensor>> {
        Ok(self
            .adapter_named_parameters(name)?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    /// The adapter's trainable tensors named as in adapter_model.safetensors without the
    /// `base_model.model.` prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`,
    /// `score.weight`).
    pub fn adapter_named_parameters(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(self.adapter(name)?.named(&self.module_names))
    }

    /// Folds the adapter into the base weights (W += scale * B A, in the base kind; GPT-2's
    /// Conv1D handled by the (out, in) internal layout) and detaches it. Its head, if any,
    /// becomes the base `score` head. The model then runs the merged weights with
    /// `adapter: None`.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let adapter = self.adapter(name)?;
        for lin in self.linears() {
            if let Some(pair) = adapter.pair(lin.id) {
                let delta = delta_weight(pair, adapter.scale);
                let merged = (lin.weight.to_kind(Kind::Float) + delta).to_kind(lin.weight.kind());
                lin.weight.shallow_clone().f_copy_(&merged)?;
            }
        }
        let head = adapter.head.as_ref().map(|h| h.weight.detach().copy());
        if let Some(h) = head {
            self.base_head = Some(h);
        }
        self.adapters.remove(name);
        self.reset_base_id();
        Ok(())
    }
}
