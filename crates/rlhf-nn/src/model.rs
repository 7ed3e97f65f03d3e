//! The model: one frozen base (Llama family or GPT-2) in memory, any number of named LoRA
//! adapters on it, optional scalar heads, and the two entry points: all-position forward
//! ([`Model::forward`], for scoring and training) and the cached decode step
//! ([`Model::forward_cached`], for sampling). `adapter: None` runs the base, which is the
//! reference policy; no second copy of the weights exists.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::batch::SeqBatch;
use crate::config::{Arch, ModelConfig};
use crate::error::{NnError, Result};
use crate::gpt2::Gpt2;
use crate::kv_cache::KvCache;
use crate::layers::{Ctx, Linear};
use crate::llama::{pick, Keep, Llama};
use crate::loader::Loader;
use crate::lora::{Adapter, Head, HeadKind};
use crate::weights::{write_json, write_safetensors, Checkpoint};

/// The module name of an untied LM head (a LoRA target: `--lora-targets all-linear,lm_head`).
pub const LM_HEAD: &str = "lm_head";

pub(crate) enum Body {
    Llama(Llama),
    Gpt2(Gpt2),
}

/// A base model with its adapters. See the crate docs for the contract.
pub struct Model {
    pub(crate) cfg: ModelConfig,
    pub(crate) body: Body,
    /// The LM head `lm_head` (weight (vocab, hidden)) when not tied to the input embedding:
    /// the last of the model's linears, so an adapter may target it (`lm_head`).
    lm_head: Option<Linear>,
    /// `score.weight` (1, hidden) of a *ForSequenceClassification checkpoint (f32).
    pub(crate) base_head: Option<Tensor>,
    /// HF module path of each linear, by id.
    pub(crate) module_names: Vec<String>,
    pub(crate) adapters: BTreeMap<String, Adapter>,
    /// Written as `base_model_name_or_path` in saved adapters.
    pub(crate) base_name: Option<String>,
    device: Device,
    kind: Kind,
    base_id: std::sync::OnceLock<String>,
}

/// A batch laid out for [`Llama::forward_shared_prefix`] ([`Model::shared_rows`]): the
/// distinct prompts (g, p) and their mask, the rows' responses (n, r) and their mask, each
/// row's prompt (n,), and (p, r).
struct SharedRows {
    prompts: Tensor,
    prompt_mask: Tensor,
    responses: Tensor,
    response_mask: Tensor,
    group: Tensor,
    width: (i64, i64),
}

impl SharedRows {
    /// The prompts and their mask.
    fn prompts(&self) -> (&Tensor, &Tensor) {
        (&self.prompts, &self.prompt_mask)
    }

    /// The responses and their mask.
    fn continuations(&self) -> (&Tensor, &Tensor) {
        (&self.responses, &self.response_mask)
    }
}

impl Model {
    /// Loads a Hugging Face model folder (config.json + safetensors) onto `device` as `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = ModelConfig::from_hf_json(dir)?;
        let mut ck = Checkpoint::open_model_dir(dir)?;
        let mut m = Self::from_checkpoint(cfg, &mut ck, device, kind)?;
        m.base_name = Some(dir.display().to_string());
        Ok(m)
    }

    /// Sets `base_model_name_or_path` for adapters saved from now on (default: the folder
    /// the model was loaded from).
    pub fn set_base_name(&mut self, name: Option<String>) {
        self.base_name = name;
    }

    /// A model with random weights (normal(0, initializer_range); norms 1; biases 0), drawn
    /// on the CPU from `seed` so the result does not depend on the device.
    pub fn random(cfg: &ModelConfig, device: Device, kind: Kind, seed: u64) -> Result<Self> {
        cfg.validate(Path::new("<config>"))?;
        let mut tensors = Vec::new();
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let std = cfg.initializer_range;
        let mut normal = |name: String, shape: &[i64]| {
            let t = crate::rng::normal_tensor(seed, &name, shape, std);
            tensors.push((name, t));
        };
        let hd = cfg.head_dim;
        let (q, kv, i) = (
            cfg.num_heads * hd,
            cfg.num_kv_heads * hd,
            cfg.intermediate_size,
        );
        let mut ones = Vec::new();
        let mut zeros = Vec::new();
        match cfg.arch {
            Arch::Llama => {
                normal("model.embed_tokens.weight".into(), &[v, h]);
                for n in 0..cfg.num_layers {
                    let p = format!("model.layers.{n}");
                    for (m, o, inp, bias) in [
                        ("self_attn.q_proj", q, h, cfg.qkv_bias),
                        ("self_attn.k_proj", kv, h, cfg.qkv_bias),
                        ("self_attn.v_proj", kv, h, cfg.qkv_bias),
                        ("self_attn.o_proj", h, q, cfg.o_bias),
                        ("mlp.gate_proj", i, h, cfg.mlp_bias),
                        ("mlp.up_proj", i, h, cfg.mlp_bias),
                        ("mlp.down_proj", h, i, cfg.mlp_bias),
                    ] {
                        normal(format!("{p}.{m}.weight"), &[o, inp]);
                        if bias {
                            zeros.push((format!("{p}.{m}.bias"), vec![o]));
                        }
                    }
                    ones.push((format!("{p}.input_layernorm.weight"), vec![h]));
                    ones.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
                }
                ones.push(("model.norm.weight".into(), vec![h]));
                if !cfg.tie_word_embeddings {
                    normal("lm_head.weight".into(), &[v, h]);
                }
            }
            Arch::Gpt2 => {
                normal("transformer.wte.weight".into(), &[v, h]);
                normal(
                    "transformer.wpe.weight".into(),
                    &[cfg.max_position_embeddings, h],
                );
                for n in 0..cfg.num_layers {
                    let p = format!("transformer.h.{n}");
                    for (m, inp, o) in [
                        ("attn.c_attn", h, 3 * h),
                        ("attn.c_proj", h, h),
                        ("mlp.c_fc", h, i),
                        ("mlp.c_proj", i, h),
                    ] {
                        normal(format!("{p}.{m}.weight"), &[inp, o]);
                        zeros.push((format!("{p}.{m}.bias"), vec![o]));
                    }
                    for ln in ["ln_1", "ln_2"] {
                        ones.push((format!("{p}.{ln}.weight"), vec![h]));
                        zeros.push((format!("{p}.{ln}.bias"), vec![h]));
                    }
                }
                ones.push(("transformer.ln_f.weight".into(), vec![h]));
                zeros.push(("transformer.ln_f.bias".into(), vec![h]));
                if !cfg.tie_word_embeddings {
                    normal("lm_head.weight".into(), &[v, h]);
                }
            }
        }
        for (name, shape) in ones {
            tensors.push((name, crate::rng::full(&shape, 1.0)));
        }
        for (name, shape) in zeros {
            tensors.push((name, crate::rng::full(&shape, 0.0)));
        }
        let mut ck = Checkpoint::from_tensors(Path::new("<random>"), tensors);
        Self::from_checkpoint(cfg.clone(), &mut ck, device, kind)
    }

    fn from_checkpoint(
        cfg: ModelConfig,
        ck: &mut Checkpoint,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(NnError::Argument(format!(
                "model dtype {kind:?}: expected f32 or bf16"
            )));
        }
        let (body, mut module_names) = {
            let (canon, probe) = match cfg.arch {
                Arch::Llama => ("model.", "embed_tokens.weight"),
                Arch::Gpt2 => ("transformer.", "wte.weight"),
            };
            let mut ld = Loader::new(ck, device, kind, canon, probe);
            let body = match cfg.arch {
                Arch::Llama => Body::Llama(Llama::load(&mut ld, &cfg)?),
                Arch::Gpt2 => Body::Gpt2(Gpt2::load(&mut ld, &cfg)?),
            };
            (body, ld.module_names)
        };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let place = |t: Tensor, k: Kind| t.to_device(device).to_kind(k).contiguous();
        let base_head = ck
            .take_opt("score.weight", &[1, h])?
            .map(|t| place(t, Kind::Float));
        let lm_head = if cfg.tie_word_embeddings {
            ck.discard(|k| k == "lm_head.weight");
            None
        } else {
            match ck.take_opt("lm_head.weight", &[v, h])? {
                Some(t) => {
                    module_names.push(LM_HEAD.to_string());
                    Some(Linear {
                        id: module_names.len() - 1,
                        name: LM_HEAD.to_string(),
                        weight: place(t, kind),
                        bias: None,
                        conv1d: false,
                    })
                }
                None if base_head.is_some() => None,
                None => {
                    return Err(NnError::MissingTensor {
                        path: ck.path.clone(),
                        name: "lm_head.weight".into(),
                        hint: "; config.json says tie_word_embeddings is false".into(),
                    })
                }
            }
        };
        ck.finish("they do not belong to this architecture (is config.json the right one?)")?;
        Ok(Model {
            cfg,
            body,
            lm_head,
            base_head,
            module_names,
            adapters: BTreeMap::new(),
            base_name: None,
            device,
            kind,
            base_id: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn reset_base_id(&mut self) {
        self.base_id = std::sync::OnceLock::new();
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weight/activation kind (Float or BFloat16).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every linear an adapter may target, by id: the blocks', then the untied LM head.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = match &self.body {
            Body::Llama(m) => m.linears(),
            Body::Gpt2(m) => m.linears(),
        };
        v.extend(self.lm_head.as_ref());
        v
    }

    /// True when the base has an LM head (false for a *ForSequenceClassification checkpoint
    /// without `lm_head.weight` and untied embeddings).
    pub fn has_lm_head(&self) -> bool {
        self.lm_head.is_some() || self.cfg.tie_word_embeddings
    }

    /// Base tensors with their HF checkpoint names and layout (GPT-2 Conv1D as (in, out)).
    pub fn base_named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        match &self.body {
            Body::Llama(m) => m.named_tensors("model.", &mut out),
            Body::Gpt2(m) => m.named_tensors("transformer.", &mut out),
        }
        if let Some(l) = &self.lm_head {
            out.push(("lm_head.weight".into(), l.weight.shallow_clone()));
        }
        if let Some(w) = &self.base_head {
            out.push(("score.weight".into(), w.shallow_clone()));
        }
        out
    }

    /// The base leaf parameters (shared handles: gradients land on the model's own tensors),
    /// for full fine-tuning. Names follow the checkpoint except that the Llama family's fused
    /// projections appear as `...self_attn.qkv_proj.weight` (rows q|k|v) and
    /// `...mlp.gate_up_proj.weight` (rows gate|up); GPT-2 Conv1D weights are (out, in) here.
    /// Use [`Model::save_pretrained`] to write HF names and layouts.
    pub fn base_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        match &self.body {
            Body::Llama(m) => m.parameters("model.", &mut out),
            Body::Gpt2(m) => {
                // GPT-2 keeps one tensor per module; Conv1D weights are (out, in) here.
                for l in m.linears() {
                    out.push((format!("{}.weight", l.name), l.weight.shallow_clone()));
                    if let Some(b) = &l.bias {
                        out.push((format!("{}.bias", l.name), b.shallow_clone()));
                    }
                }
                let linear: std::collections::HashSet<String> =
                    out.iter().map(|(n, _)| n.clone()).collect();
                let mut rest = Vec::new();
                m.named_tensors("transformer.", &mut rest);
                out.extend(rest.into_iter().filter(|(n, _)| !linear.contains(n)));
            }
        }
        if let Some(l) = &self.lm_head {
            out.push(("lm_head.weight".into(), l.weight.shallow_clone()));
        }
        if let Some(w) = &self.base_head {
            out.push(("score.weight".into(), w.shallow_clone()));
        }
        out
    }

    /// Makes the base weights trainable (full fine-tuning) or frozen (the default).
    pub fn set_base_trainable(&mut self, trainable: bool) {
        for (_, t) in self.base_parameters() {
            let _ = t.set_requires_grad(trainable);
        }
        self.base_id = std::sync::OnceLock::new();
    }

    /// Content hash (16 hex) of the base weights, names and shapes; stable across runs.
    pub fn base_id(&self) -> String {
        self.base_id
            .get_or_init(|| self.base_id_as(self.kind))
            .clone()
    }

    /// The base id this model's weights would have if loaded in `kind`: the weights cast
    /// to `kind` and hashed as [`Model::base_id`] does. An adapter trained on a bfloat16
    /// copy of a base records that copy's id; a float32 load of the same base gives it back
    /// with `base_id_as(Kind::BFloat16)` (the cast rounds as loading in bfloat16 does).
    pub fn base_id_as(&self, kind: Kind) -> String {
        let mut h = blake3::Hasher::new();
        let mut named = self.base_named_tensors();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in named {
            let t = t.detach().to_device(Device::Cpu).to_kind(kind).contiguous();
            h.update(name.as_bytes());
            h.update(format!("{:?}{:?}", t.size(), t.kind()).as_bytes());
            // the tensor's own bytes, on every thread (a copy of each weight and one thread
            // took ~50 ms of a 30M model's load)
            if let Some(bytes) = crate::decode_kernels::bytes(&t) {
                rlhf_core::hash::update_large(&mut h, bytes);
                continue;
            }
            let numel = t.numel();
            let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            if t.f_copy_data_u8(&mut buf, numel).is_ok() {
                h.update(&buf);
            }
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (transformers layout; tokenizer
    /// files are the caller's). `dir` is created if needed.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
        let mut cfg = self.cfg.to_hf_json();
        if let Some(m) = cfg.as_object_mut() {
            let dtype = if self.kind == Kind::BFloat16 {
                "bfloat16"
            } else {
                "float32"
            };
            m.insert("dtype".into(), serde_json::json!(dtype));
            m.remove("torch_dtype");
        }
        write_json(&dir.join("config.json"), &cfg)?;
        write_safetensors(&dir.join("model.safetensors"), &self.base_named_tensors())
    }

    pub(crate) fn adapter(&self, name: &str) -> Result<&Adapter> {
        self.adapters.get(name).ok_or_else(|| NnError::Adapter {
            name: name.to_string(),
            message: format!(
                "not attached; attached: [{}]",
                self.adapters.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    fn ctx<'a>(&'a self, adapter: Option<&str>, train: bool) -> Result<Ctx<'a>> {
        Ok(Ctx {
            adapter: match adapter {
                Some(n) => Some(self.adapter(n)?),
                None => None,
            },
            train,
        })
    }

    fn check_ids(&self, input_ids: &Tensor, mask: &Tensor) -> Result<()> {
        let (s, m) = (input_ids.size(), mask.size());
        if s.len() != 2 || s != m {
            return Err(NnError::Argument(format!(
                "input_ids {s:?} and attention_mask {m:?}: expected the same (batch, seq) shape"
            )));
        }
        Ok(())
    }

    /// All-position forward: `input_ids` (b, s) i64, `attention_mask` (b, s) (1 = token,
    /// 0 = pad; left or right padding) -> final hidden states (b, s, hidden) in the model
    /// kind. `adapter` None = base (reference policy); `train` enables LoRA dropout. Runs
    /// with grad unless the caller holds a `tch::no_grad_guard()`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        adapter: Option<&str>,
        train: bool,
    ) -> Result<Tensor> {
        self.check_ids(input_ids, attention_mask)?;
        let ctx = self.ctx(adapter, train)?;
        match &self.body {
            Body::Llama(m) => m.forward(input_ids, attention_mask, None, ctx),
            Body::Gpt2(m) => m.forward(input_ids, attention_mask, None, ctx),
        }
    }

    /// [`Model::forward`] on a [`SeqBatch`]: the final hidden states (b, L, hidden), those of
    /// the ordinary forward up to rounding at every token position (padding positions hold
    /// other finite values), with each prompt that several rows share (the K samples of one
    /// prompt, a preference pair) computed once on a Llama-family model when that saves enough
    /// ([`SeqBatch::shares_prompts`]): every distinct prompt runs once, and each row's response
    /// attends to its prompt's keys and values ([`Llama::forward_shared_prefix`]).
    /// Otherwise, and for GPT-2 models, training forwards with LoRA dropout (each row draws
    /// its own dropout on its prompt) and with `RLHF_NO_SHARED_PROMPTS` set, the ordinary
    /// forward. On CUDA the shared path's backward (index_select, gather) adds with atomics,
    /// so its gradients may differ between runs in the last bits.
    pub fn forward_batch(
        &self,
        batch: &SeqBatch,
        adapter: Option<&str>,
        train: bool,
    ) -> Result<Tensor> {
        let ctx = self.ctx(adapter, train)?;
        let (Body::Llama(m), Some(shared)) = (&self.body, self.shared_rows(batch, ctx, train))
        else {
            return self.forward(&batch.input_ids, &batch.attention_mask, adapter, train);
        };
        let (n, width) = (batch.len(), batch.input_ids.size()[1] as usize);
        let (p, r) = (shared.width.0 as usize, shared.width.1 as usize);
        let (hp, hr) =
            m.forward_shared_prefix(shared.prompts(), shared.continuations(), &shared.group, ctx)?;
        // Each row's states in the batch's layout: its prompt's, then its response's (padding
        // positions read the response's last column, masked wherever they are used).
        let both = Tensor::cat(&[hp.index_select(0, &shared.group), hr], 1);
        let mut at = vec![0i64; n * width];
        for i in 0..n {
            let len = batch.prompt_lens[i];
            for (j, a) in at[i * width..(i + 1) * width].iter_mut().enumerate() {
                *a = if j < len { j } else { p + (j - len).min(r - 1) } as i64;
            }
        }
        let hidden = both.size()[2];
        let at = Tensor::from_slice(&at)
            .view([n as i64, width as i64])
            .to_device(batch.input_ids.device())
            .unsqueeze(-1)
            .expand([n as i64, width as i64, hidden], false);
        Ok(both.gather(1, &at, false))
    }

    /// The final hidden states of [`Model::forward_batch`] at one position a row, `at[i]` of
    /// row i (`at` (b,) i64 in the batch's layout): (b, 1, hidden), as its output gathered
    /// there up to rounding. On a Llama-family model the last layer computes its query,
    /// attention and MLP for those positions alone (their keys and values for all): a reward
    /// model's score at each sequence's last token skips most of the last layer's work, in
    /// training and in scoring. On the shared-prompt path that holds where every row's
    /// position is in its response; otherwise, and for GPT-2 models, the whole forward runs
    /// and the positions are gathered from it.
    pub fn forward_batch_at(
        &self,
        batch: &SeqBatch,
        adapter: Option<&str>,
        train: bool,
        at: &Tensor,
    ) -> Result<Tensor> {
        let ctx = self.ctx(adapter, train)?;
        let gathered = || Ok(pick(&self.forward_batch(batch, adapter, train)?, at, 1));
        let Body::Llama(m) = &self.body else {
            return gathered();
        };
        let Some(shared) = self.shared_rows(batch, ctx, train) else {
            self.check_ids(&batch.input_ids, &batch.attention_mask)?;
            return m.forward_upto(
                &batch.input_ids,
                &batch.attention_mask,
                None,
                ctx,
                Keep::At(at),
            );
        };
        // Each row's position in its response.
        let host = Vec::<i64>::try_from(at.to_device(tch::Device::Cpu))?;
        let in_response: Option<Vec<i64>> = host
            .iter()
            .zip(&batch.prompt_lens)
            .map(|(&a, &len)| (a >= len as i64).then(|| a - len as i64))
            .collect();
        let Some(in_response) = in_response else {
            return gathered();
        };
        let at_r = Tensor::from_slice(&in_response).to_device(batch.input_ids.device());
        m.forward_shared_prefix_at(
            shared.prompts(),
            shared.continuations(),
            &shared.group,
            &at_r,
            ctx,
        )
    }

    /// The shared-prompt inputs of [`Model::forward_batch`] for a Llama-family model, or `None`
    /// where the ordinary forward runs: GPT-2, training with LoRA dropout (each row draws its
    /// own dropout on its prompt), `RLHF_NO_SHARED_PROMPTS` set, or a batch whose sharing saves
    /// too little ([`SeqBatch::shares_prompts`]).
    fn shared_rows(&self, batch: &SeqBatch, ctx: Ctx, train: bool) -> Option<SharedRows> {
        let dropout = train && ctx.adapter.is_some_and(|a| a.config.dropout > 0.0);
        // RLHF_NO_SHARED_PROMPTS=1: every row runs its prompt (to measure the difference)
        let off = std::env::var_os("RLHF_NO_SHARED_PROMPTS").is_some();
        let (Body::Llama(_), false, false, true) =
            (&self.body, dropout, off, batch.shares_prompts())
        else {
            return None;
        };
        let device = batch.input_ids.device();
        let width = batch.input_ids.size()[1] as usize;
        let host = batch.host_ids();
        let groups = &batch.prompt_groups;
        let p = groups
            .iter()
            .map(|g| batch.prompt_lens[g[0]])
            .max()
            .unwrap_or(1);
        let r = batch
            .response_lens
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        let (g_n, n) = (groups.len(), batch.len());
        let (mut prompts, mut prompt_mask) = (vec![0i64; g_n * p], vec![0i64; g_n * p]);
        let (mut ids, mut mask) = (vec![0i64; n * r], vec![0i64; n * r]);
        let mut group = vec![0i64; n];
        for (gi, g) in groups.iter().enumerate() {
            let len = batch.prompt_lens[g[0]];
            prompts[gi * p..gi * p + len].copy_from_slice(&host[g[0] * width..g[0] * width + len]);
            prompt_mask[gi * p..gi * p + len].fill(1);
            for &i in g {
                let (start, rl) = (i * width + len, batch.response_lens[i]);
                ids[i * r..i * r + rl].copy_from_slice(&host[start..start + rl]);
                mask[i * r..i * r + rl].fill(1);
                group[i] = gi as i64;
            }
        }
        let t = |v: &[i64], cols: usize| {
            Tensor::from_slice(v)
                .view([(v.len() / cols) as i64, cols as i64])
                .to_device(device)
        };
        Some(SharedRows {
            prompts: t(&prompts, p),
            prompt_mask: t(&prompt_mask, p),
            responses: t(&ids, r),
            response_mask: t(&mask, r),
            group: Tensor::from_slice(&group).to_device(device),
            width: (p as i64, r as i64),
        })
    }

    /// Decode step: runs `input_ids` (b, t) with mask (b, t) of the NEW tokens after what
    /// `cache` holds, appends their keys/values, returns hidden (b, t, hidden). Use t =
    /// prompt length for the prefill, then t = 1.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&str>,
    ) -> Result<Tensor> {
        self.cached(input_ids, attention_mask, cache, adapter, false)
    }

    /// A prompt's prefill: [`Model::forward_cached`] on the whole prompt, returning the hidden
    /// state of its last position only (b, 1, hidden), which is all sampling reads. A Llama
    /// model then runs its last layer's query, attention and MLP for that position alone (on
    /// the `sampling` bench's 16 x 64-token prompts, about a ninth of the prefill's work).
    pub fn prefill(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&str>,
    ) -> Result<Tensor> {
        self.cached(input_ids, attention_mask, cache, adapter, true)
    }

    /// [`Model::forward_cached`], or with `last_only` [`Model::prefill`].
    fn cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&str>,
        last_only: bool,
    ) -> Result<Tensor> {
        self.check_ids(input_ids, attention_mask)?;
        let ctx = self.ctx(adapter, false)?;
        match &self.body {
            Body::Llama(m) => {
                let keep = if last_only { Keep::Last } else { Keep::All };
                m.forward_upto(input_ids, attention_mask, Some(cache), ctx, keep)
            }
            Body::Gpt2(m) => {
                let h = m.forward(input_ids, attention_mask, Some(cache), ctx)?;
                let t = h.size()[1];
                Ok(if last_only { h.narrow(1, t - 1, 1) } else { h })
            }
        }
    }

    /// LM logits (b, s, vocab) in the model kind from hidden states (b, s, hidden), with the
    /// LoRA of `adapter` on the head where it targets `lm_head` (None = base = reference
    /// policy); `train` enables its dropout, as in [`Model::forward`].
    pub fn lm_logits(&self, hidden: &Tensor, adapter: Option<&str>, train: bool) -> Result<Tensor> {
        let ctx = self.ctx(adapter, train)?;
        let w = match (&self.lm_head, &self.body) {
            (Some(l), _) => return Ok(l.forward(hidden, ctx)),
            (None, _) if !self.cfg.tie_word_embeddings => {
                return Err(NnError::Argument(
                    "this model has no LM head (a sequence-classification checkpoint): it can score, not generate"
                        .into(),
                ))
            }
            (None, Body::Llama(m)) => &m.embed_tokens,
            (None, Body::Gpt2(m)) => &m.wte,
        };
        Ok(crate::decode_kernels::gemm::linear(hidden, w, None))
    }

    /// True when the LM head is a module of its own (`lm_head`, not tied to the input
    /// embedding), which an adapter may then target.
    pub fn has_untied_lm_head(&self) -> bool {
        self.lm_head.is_some()
    }

    /// Scalar head values (b, s) in f32 at every position: the adapter's head, or with
    /// `adapter` None the base's `score` (a *ForSequenceClassification checkpoint).
    pub fn head(&self, adapter: Option<&str>, hidden: &Tensor) -> Result<Tensor> {
        match adapter {
            Some(name) => match &self.adapter(name)?.head {
                Some(h) => Ok(h.forward(hidden)),
                None => Err(NnError::Adapter {
                    name: name.into(),
                    message: "has no score/value head (add it with a HeadKind, or load a SEQ_CLS adapter)".into(),
                }),
            },
            None => match &self.base_head {
                Some(w) => Ok(Head { kind: HeadKind::Score, weight: w.shallow_clone() }.forward(hidden)),
                None => Err(NnError::Argument(
                    "the base model has no `score` head; pass a reward/value adapter".into(),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base id hashes the weights' bytes read in place: the same id as hashing a copy of
    /// each weight (how it was computed before), in float32 and cast to bfloat16 (ids recorded
    /// in adapters stay valid).
    #[test]
    fn the_base_id_hashes_the_bytes_of_a_copy_of_each_weight() {
        let cfg = ModelConfig::preset("llama-tiny").unwrap();
        let m = Model::random(&cfg, Device::Cpu, Kind::Float, 7).unwrap();
        let copied = |kind: Kind| {
            let mut h = blake3::Hasher::new();
            let mut named = m.base_named_tensors();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in named {
                let t = t.detach().to_kind(kind).contiguous();
                h.update(name.as_bytes());
                h.update(format!("{:?}{:?}", t.size(), t.kind()).as_bytes());
                let numel = t.numel();
                let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
                t.f_copy_data_u8(&mut buf, numel).unwrap();
                h.update(&buf);
            }
            h.finalize().to_hex()[..16].to_string()
        };
        assert_eq!(m.base_id(), copied(Kind::Float));
        assert_eq!(m.base_id_as(Kind::BFloat16), copied(Kind::BFloat16));
        assert_ne!(m.base_id(), m.base_id_as(Kind::BFloat16));
    }
}
