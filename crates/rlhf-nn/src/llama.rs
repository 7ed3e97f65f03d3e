//! Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM, TinyLlama): RMSNorm, rotary
//! positions, SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2).
//! Reference: transformers `models/llama/modeling_llama.py`; Touvron et al. 2023,
//! <https://arxiv.org/abs/2307.09288>. Tensor names follow HF (`model.layers.N.self_attn.q_proj`).

use tch::Tensor;

use crate::config::ModelConfig;
use crate::decode_kernels::layer::{llama_step, LlamaWeights, Proj, StepInputs};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{apply_rope, step_proj, Ctx, Fused, Linear, RmsNorm, Rope};
use crate::loader::{push_linear, Loader};

pub(crate) struct LlamaLayer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    /// q, k, v as one GEMM.
    qkv: Fused,
    /// gate, up as one GEMM.
    gate_up: Fused,
}

pub(crate) struct Llama {
    pub embed_tokens: Tensor,
    layers: Vec<LlamaLayer>,
    norm: RmsNorm,
    rope: Rope,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Llama {
    pub fn load(ld: &mut Loader, cfg: &ModelConfig) -> Result<Self> {
        let (h, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let q_out = cfg.num_heads * hd;
        let kv_out = cfg.num_kv_heads * hd;
        let embed_tokens = ld.tensor("embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers as usize);
        for n in 0..cfg.num_layers {
            let p = format!("layers.{n}");
            let mut q_proj = ld.linear(
                &format!("{p}.self_attn.q_proj"),
                h,
                q_out,
                cfg.qkv_bias,
                false,
            )?;
            let mut k_proj = ld.linear(
                &format!("{p}.self_attn.k_proj"),
                h,
                kv_out,
                cfg.qkv_bias,
                false,
            )?;
            let mut v_proj = ld.linear(
                &format!("{p}.self_attn.v_proj"),
                h,
                kv_out,
                cfg.qkv_bias,
                false,
            )?;
            let o_proj = ld.linear(
                &format!("{p}.self_attn.o_proj"),
                q_out,
                h,
                cfg.o_bias,
                false,
            )?;
            let mut gate_proj =
                ld.linear(&format!("{p}.mlp.gate_proj"), h, i, cfg.mlp_bias, false)?;
            let mut up_proj = ld.linear(&format!("{p}.mlp.up_proj"), h, i, cfg.mlp_bias, false)?;
            let down_proj = ld.linear(&format!("{p}.mlp.down_proj"), i, h, cfg.mlp_bias, false)?;
            let qkv = Fused::new(&mut [&mut q_proj, &mut k_proj, &mut v_proj]);
            let gate_up = Fused::new(&mut [&mut gate_proj, &mut up_proj]);
            layers.push(LlamaLayer {
                input_layernorm: ld.rms_norm(&format!("{p}.input_layernorm"), h, cfg.norm_eps)?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                post_attention_layernorm: ld.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    cfg.norm_eps,
                )?,
                gate_proj,
                up_proj,
                down_proj,
                qkv,
                gate_up,
            });
        }
        let norm = ld.rms_norm("norm", h, cfg.norm_eps)?;
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            rope: Rope::new(cfg, ld.device),
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
        })
    }

    /// `input_ids` (b, t) -> final-norm hidden (b, t, hidden). With a cache, `mask` covers the
    /// new tokens only and keys/values are appended to the cache.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        ctx: Ctx,
    ) -> Result<Tensor> {
        self.forward_upto(input_ids, mask, cache, ctx, Keep::All)
    }

    /// [`Llama::forward`] returning the hidden states of the positions `keep` names: with
    /// [`Keep::Last`] or [`Keep::At`] one per row (b, 1, hidden), the last layer computing its
    /// query, attention and MLP for that position only (its keys and values still for all,
    /// into the cache). A prompt's prefill needs no more, nor does a reward model's score, and
    /// both skip most of a layer's work.
    pub fn forward_upto(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        ctx: Ctx,
        keep: Keep,
    ) -> Result<Tensor> {
        let t = input_ids.size()[1];
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let frame = crate::kv_cache::Frame::new(mask, cache.as_deref_mut(), x.kind())?;
        let (cos, sin) = match &frame.host_positions {
            Some(p) => self.rope.cos_sin_host(p, x.kind(), x.device()),
            None => self.rope.cos_sin(&frame.positions, x.kind()),
        };
        let last_layer = self.layers.len().saturating_sub(1);
        for (n, layer) in self.layers.iter().enumerate() {
            x = layer.forward(
                &x,
                (&cos, &sin),
                &frame.attn_mask,
                cache.as_deref_mut().map(|c| (c, n)),
                (ctx, if n == last_layer { keep } else { Keep::All }),
                self,
            )?;
        }
        if self.layers.is_empty() {
            x = match keep {
                Keep::All => x,
                Keep::Last => x.narrow(1, t - 1, 1),
                Keep::At(at) => pick(&x, at, 1),
            };
        }
        if let Some(c) = cache {
            c.commit(t);
        }
        Ok(self.norm.forward(&x))
    }

    /// Rows that share prompts, each prompt computed once: `prompts` (g, p) right-padded
    /// (`prompt_mask` (g, p), 1 = token), `ids` (n, r) the rows' continuations, right-padded
    /// (`mask` (n, r)), `group` (n,) i64 the prompt of each row. Returns the final-norm hidden
    /// states of the prompts (g, p, hidden) and of the continuations (n, r, hidden): the full
    /// forward's on the n rows `prompt ++ continuation`, up to rounding, with the products on
    /// g p + n r rows instead of n (p + r). A continuation attends to its prompt's keys and
    /// values and, causally, its own; its positions follow its prompt's. The prompts' and
    /// continuations' positions run through each product as one matrix of g p + n r rows
    /// (a prompt's few dozen rows alone ran at half the rate of a larger product).
    pub fn forward_shared_prefix(
        &self,
        prompts: (&Tensor, &Tensor),
        continuations: (&Tensor, &Tensor),
        group: &Tensor,
        ctx: Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let ((g, p), (n, r)) = (
            (prompts.0.size()[0], prompts.0.size()[1]),
            (continuations.0.size()[0], continuations.0.size()[1]),
        );
        let x = self.shared_body(prompts, continuations, group, None, ctx)?;
        let hidden = x.size()[1];
        Ok((
            x.narrow(0, 0, g * p).reshape([g, p, hidden]),
            x.narrow(0, g * p, n * r).reshape([n, r, hidden]),
        ))
    }

    /// [`Llama::forward_shared_prefix`] returning continuation i's final-norm hidden state at
    /// its position `at[i]` alone (`at` (n,) i64, below its width): (n, 1, hidden). The last
    /// layer computes the keys and values of every position and the query, attention and MLP
    /// of those n positions only (a reward model's score reads no more).
    pub fn forward_shared_prefix_at(
        &self,
        prompts: (&Tensor, &Tensor),
        continuations: (&Tensor, &Tensor),
        group: &Tensor,
        at: &Tensor,
        ctx: Ctx,
    ) -> Result<Tensor> {
        Ok(self
            .shared_body(prompts, continuations, group, Some(at), ctx)?
            .unsqueeze(1))
    }

    /// The layers and final norm of [`Llama::forward_shared_prefix`]: (g p + n r, hidden), or
    /// with `at` (n, hidden) ([`Llama::forward_shared_prefix_at`]).
    fn shared_body(
        &self,
        (prompts, prompt_mask): (&Tensor, &Tensor),
        (ids, mask): (&Tensor, &Tensor),
        group: &Tensor,
        at: Option<&Tensor>,
        ctx: Ctx,
    ) -> Result<Tensor> {
        let ((g, p), (n, r)) = (
            (prompts.size()[0], prompts.size()[1]),
            (ids.size()[0], ids.size()[1]),
        );
        let rows = Tensor::cat(&[prompts.reshape([g * p]), ids.reshape([n * r])], 0);
        let mut x = Tensor::embedding(&self.embed_tokens, &rows, -1, false, false);
        let kind = x.kind();
        let prompt_frame = crate::kv_cache::Frame::new(prompt_mask, None, kind)?;
        let prompt_mask = prompt_mask.to_kind(tch::Kind::Int64).index_select(0, group);
        let mask = mask.to_kind(tch::Kind::Int64);
        let past = prompt_mask.sum_dim_intlist(1, false, tch::Kind::Int64);
        let keys = Tensor::cat(&[prompt_mask, mask.shallow_clone()], 1);
        let mask_r = crate::layers::attention_mask(&keys, r, p, kind);
        let (cos_p, sin_p) = self.rope.cos_sin(&prompt_frame.positions, kind);
        let (cos_r, sin_r) = self
            .rope
            .cos_sin(&crate::layers::positions(&mask, Some(&past)), kind);
        let shared = Shared {
            shape: (g, p, n, r),
            group,
            rope_p: (&cos_p, &sin_p),
            rope_r: (&cos_r, &sin_r),
            mask_p: &prompt_frame.attn_mask,
            mask_r: &mask_r,
        };
        let last_layer = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let at = at.filter(|_| i == last_layer);
            x = layer.forward_shared(&x, &shared, at, ctx, self)?;
        }
        if let (Some(at), true) = (at, self.layers.is_empty()) {
            x = x.index_select(0, &continuation_rows(at, (g, p, n, r)));
        }
        Ok(self.norm.forward(&x))
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.q_proj,
                    &l.k_proj,
                    &l.v_proj,
                    &l.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ]
            })
            .collect()
    }

    /// The leaf tensors (trainable in full fine-tuning): fused projections appear once, as
    /// `...self_attn.qkv_proj.weight` and `...mlp.gate_up_proj.weight` (rows q|k|v, gate|up).
    pub fn parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((
            format!("{prefix}embed_tokens.weight"),
            self.embed_tokens.shallow_clone(),
        ));
        for (n, l) in self.layers.iter().enumerate() {
            let p = format!("{prefix}layers.{n}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.shallow_clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.shallow_clone(),
            ));
            for (name, f) in [
                ("self_attn.qkv_proj", &l.qkv),
                ("mlp.gate_up_proj", &l.gate_up),
            ] {
                out.push((format!("{p}.{name}.weight"), f.weight.shallow_clone()));
                if let Some(b) = &f.bias {
                    out.push((format!("{p}.{name}.bias"), b.shallow_clone()));
                }
            }
            for lin in [&l.o_proj, &l.down_proj] {
                out.push((format!("{}.weight", lin.name), lin.weight.shallow_clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{}.bias", lin.name), b.shallow_clone()));
                }
            }
        }
        out.push((
            format!("{prefix}norm.weight"),
            self.norm.weight.shallow_clone(),
        ));
    }

    /// Base tensors in HF layout and names (without the LM head).
    pub fn named_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((
            format!("{prefix}embed_tokens.weight"),
            self.embed_tokens.shallow_clone(),
        ));
        for (n, l) in self.layers.iter().enumerate() {
            let p = format!("{prefix}layers.{n}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.shallow_clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.shallow_clone(),
            ));
            for lin in [
                &l.q_proj,
                &l.k_proj,
                &l.v_proj,
                &l.o_proj,
                &l.gate_proj,
                &l.up_proj,
                &l.down_proj,
            ] {
                push_linear(out, lin);
            }
        }
        out.push((
            format!("{prefix}norm.weight"),
            self.norm.weight.shallow_clone(),
        ));
    }
}

impl LlamaLayer {
    /// The whole layer for one decode step by the fused CPU kernel, where it applies (see
    /// [`crate::decode_kernels::layer`]); it writes the new key and value into the cache.
    #[allow(clippy::too_many_arguments)]
    fn decode_step(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attn_mask: &Tensor,
        cache: &KvCache,
        n: usize,
        ctx: Ctx,
        m: &Llama,
    ) -> Option<Tensor> {
        crate::decode_kernels::enabled()?;
        fn proj<'a>(l: &'a Linear, ctx: Ctx<'a>) -> Option<Proj<'a>> {
            step_proj(&l.weight, l.bias.as_ref(), &[l], ctx)
        }
        let weights = LlamaWeights {
            input_norm: (&self.input_layernorm.weight, self.input_layernorm.eps),
            post_norm: (
                &self.post_attention_layernorm.weight,
                self.post_attention_layernorm.eps,
            ),
            qkv: step_proj(
                &self.qkv.weight,
                self.qkv.bias.as_ref(),
                &[&self.q_proj, &self.k_proj, &self.v_proj],
                ctx,
            )?,
            o: proj(&self.o_proj, ctx)?,
            gate_up: step_proj(
                &self.gate_up.weight,
                self.gate_up.bias.as_ref(),
                &[&self.gate_proj, &self.up_proj],
                ctx,
            )?,
            down: proj(&self.down_proj, ctx)?,
            heads: m.num_heads as usize,
            kv_heads: m.num_kv_heads as usize,
            head_dim: m.head_dim as usize,
        };
        let inputs = StepInputs {
            x,
            cos,
            sin,
            mask: attn_mask,
            cache: cache.layer(n),
            pos: cache.len() as usize,
        };
        llama_step(&weights, &inputs)
    }

    /// The layer on `x` (b, t, hidden); with a position kept a row ([`Keep`]), its output at
    /// that position alone (b, 1, hidden), the keys and values still stored for every
    /// position.
    fn forward(
        &self,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        attn_mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        (ctx, keep): (Ctx, Keep),
        m: &Llama,
    ) -> Result<Tensor> {
        let t = x.size()[1];
        if let (1, Some((c, n))) = (t, &cache) {
            if let Some(y) = self.decode_step(x, cos, sin, attn_mask, c, *n, ctx, m) {
                return Ok(y);
            }
        }
        let (q, k, v) = self.project(x, cos, sin, ctx, m);
        let (k, v) = match cache {
            Some((c, n)) => c.store(n, &k, &v)?,
            None => (k, v),
        };
        // With one position kept a row, the rest runs on that position alone.
        let last = |t: &Tensor, dim: i64| t.narrow(dim, t.size()[dim as usize] - 1, 1);
        let (x, q, cos, sin, attn_mask) = match keep {
            Keep::Last if t > 1 => (
                last(x, 1),
                last(&q, 2),
                last(cos, 2),
                last(sin, 2),
                last(attn_mask, 2),
            ),
            Keep::At(at) => (
                pick(x, at, 1),
                pick(&q, at, 2),
                pick(cos, at, 2),
                pick(sin, at, 2),
                pick(attn_mask, at, 2),
            ),
            _ => (
                x.shallow_clone(),
                q,
                cos.shallow_clone(),
                sin.shallow_clone(),
                attn_mask.shallow_clone(),
            ),
        };
        let q = apply_rope(&q, &cos, &sin);
        let a = self.attend(&q, &k, &v, &attn_mask, m)?;
        Ok(self.output_and_mlp(&x, &a, ctx))
    }

    /// The layer on rows that share prompts ([`Llama::forward_shared_prefix`]): `x`
    /// (g p + n r, hidden) the prompts' positions, then the continuations'; a continuation's
    /// attention reads the keys and values of its prompt (`group`), computed once, before its
    /// own. The products take all positions at once; attention runs per part. With `at` (n,),
    /// continuation i's output at its position `at[i]` alone (n, hidden): the prompts' part
    /// and the other positions give only their keys and values.
    fn forward_shared(
        &self,
        x: &Tensor,
        s: &Shared,
        at: Option<&Tensor>,
        ctx: Ctx,
        m: &Llama,
    ) -> Result<Tensor> {
        let (g, p, n, r) = s.shape;
        let h = self.input_layernorm.forward(x);
        let qkv = self
            .qkv
            .forward(&h, &[&self.q_proj, &self.k_proj, &self.v_proj], ctx);
        // (rows, heads * d) -> the prompts' (g, heads, p, d) and continuations' (n, heads, r, d)
        let parts = |t: &Tensor, heads: i64| {
            let part = |from: i64, b: i64, len: i64| {
                t.narrow(0, from, b * len)
                    .reshape([b, len, heads, m.head_dim])
                    .transpose(1, 2)
            };
            (part(0, g, p), part(g * p, n, r))
        };
        let (qp, qr) = parts(&qkv[0], m.num_heads);
        let (kp, kr) = parts(&qkv[1], m.num_kv_heads);
        let (vp, vr) = parts(&qkv[2], m.num_kv_heads);
        let (cos_p, sin_p) = s.rope_p;
        let (cos_r, sin_r) = s.rope_r;
        let kp = apply_rope(&kp, cos_p, sin_p);
        let kr = apply_rope(&kr, cos_r, sin_r);
        let after_prompt =
            |prompt: &Tensor, own: Tensor| Tensor::cat(&[prompt.index_select(0, s.group), own], 2);
        let (kr, vr) = (after_prompt(&kp, kr), after_prompt(&vp, vr));
        if let Some(at) = at {
            let q = apply_rope(&pick(&qr, at, 2), &pick(cos_r, at, 2), &pick(sin_r, at, 2));
            let a = self
                .attend(&q, &kr, &vr, &pick(s.mask_r, at, 2), m)?
                .reshape([n, -1]);
            let x = x.index_select(0, &continuation_rows(at, s.shape));
            return Ok(self.output_and_mlp(&x, &a, ctx));
        }
        let qp = apply_rope(&qp, cos_p, sin_p);
        let qr = apply_rope(&qr, cos_r, sin_r);
        let a = Tensor::cat(
            &[
                self.attend(&qp, &kp, &vp, s.mask_p, m)?
                    .reshape([g * p, -1]),
                self.attend(&qr, &kr, &vr, s.mask_r, m)?
                    .reshape([n * r, -1]),
            ],
            0,
        );
        Ok(self.output_and_mlp(x, &a, ctx))
    }

    /// Input norm and the q, k, v products of `x` (b, t, hidden): q (b, heads, t, d) before
    /// its rotary embedding, k (b, kv_heads, t, d) after it, v (b, kv_heads, t, d).
    fn project(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ctx: Ctx,
        m: &Llama,
    ) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let h = self.input_layernorm.forward(x);
        let qkv = self
            .qkv
            .forward(&h, &[&self.q_proj, &self.k_proj, &self.v_proj], ctx);
        let q = qkv[0]
            .reshape([b, t, m.num_heads, m.head_dim])
            .transpose(1, 2);
        let k = qkv[1]
            .reshape([b, t, m.num_kv_heads, m.head_dim])
            .transpose(1, 2);
        let v = qkv[2]
            .reshape([b, t, m.num_kv_heads, m.head_dim])
            .transpose(1, 2);
        (q, apply_rope(&k, cos, sin), v)
    }

    /// Attention of `q` (b, heads, t, d, rotated) over `k`, `v` under the additive `mask`:
    /// (b, t, heads * d).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        m: &Llama,
    ) -> Result<Tensor> {
        let (b, t) = (q.size()[0], q.size()[2]);
        let gqa = m.num_heads != m.num_kv_heads;
        let a = crate::decode_kernels::attention::sdpa(q, k, v, mask, gqa)?;
        Ok(a.transpose(1, 2).reshape([b, t, m.num_heads * m.head_dim]))
    }

    /// The output product of the attention `a` (..., heads * d) and its residual on `x`
    /// (..., hidden), then the MLP with its residual.
    fn output_and_mlp(&self, x: &Tensor, a: &Tensor, ctx: Ctx) -> Tensor {
        let x = x + self.o_proj.forward(a, ctx);
        let h = self.post_attention_layernorm.forward(&x);
        let gu = self
            .gate_up
            .forward(&h, &[&self.gate_proj, &self.up_proj], ctx);
        let mlp = crate::decode_kernels::elementwise::swiglu(&gu[0], &gu[1])
            .unwrap_or_else(|| gu[0].silu() * &gu[1]);
        x + self.down_proj.forward(&mlp, ctx)
    }
}

/// The positions whose final hidden states a forward returns ([`Llama::forward_upto`]).
#[derive(Clone, Copy)]
pub enum Keep<'a> {
    /// Every position: (b, t, hidden).
    All,
    /// The last position of every row (a left-padded prompt's prefill): (b, 1, hidden).
    Last,
    /// Position `at[i]` of row i (`at` (b,) i64; a right-padded sequence's last token):
    /// (b, 1, hidden).
    At(&'a Tensor),
}

/// Row i's entries of `t` at index `at[i]` of dimension `dim` (rows along dimension 0, of
/// which `t` may have one, broadcast), that dimension kept with size 1.
pub(crate) fn pick(t: &Tensor, at: &Tensor, dim: i64) -> Tensor {
    let mut size = t.size();
    size[0] = at.size()[0];
    let mut index = vec![1i64; size.len()];
    index[0] = size[0];
    let t = t.expand(size.as_slice(), false);
    size[dim as usize] = 1;
    t.gather(
        dim,
        &at.view(index.as_slice()).expand(size.as_slice(), false),
        false,
    )
}

/// The rows of [`Llama::forward_shared_prefix`]'s (g p + n r, hidden) matrix that hold
/// continuation i's position `at[i]`, for (g, p, n, r).
fn continuation_rows(at: &Tensor, (g, p, n, r): (i64, i64, i64, i64)) -> Tensor {
    at + Tensor::arange(n, (tch::Kind::Int64, at.device())) * r + g * p
}

/// What every layer of [`Llama::forward_shared_prefix`] reads besides its input: (g, p, n, r)
/// = prompts, prompt width, continuations, continuation width; each continuation's prompt
/// (`group` (n,)); the rotary tables and additive masks of the prompts and of the
/// continuations.
struct Shared<'a> {
    shape: (i64, i64, i64, i64),
    group: &'a Tensor,
    rope_p: (&'a Tensor, &'a Tensor),
    rope_r: (&'a Tensor, &'a Tensor),
    mask_p: &'a Tensor,
    mask_r: &'a Tensor,
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::decode_kernels::{layer, paths, DecodeThreads};
    use crate::{KvCache, LoraConfig, Model, ModelConfig};

    /// `Model::prefill` (the last layer on the last position only) gives the full forward's
    /// last hidden state and the same cache, for every family, with left padding and an
    /// adapter on every product; in a decode scope (the kernels) and outside it (libtorch).
    #[test]
    fn prefill_gives_the_last_position_of_the_full_forward() {
        let _grad = tch::no_grad_guard();
        for preset in ["qwen2-tiny", "llama-tiny", "gpt2-tiny"] {
            let cfg = ModelConfig::preset(preset).unwrap();
            let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 7).unwrap();
            add_random_adapter(&mut model, 8);
            let (b, width) = (5i64, 40i64);
            let opts = (Kind::Int64, Device::Cpu);
            let ids = token_ids(preset, &[b, width], cfg.vocab_size);
            let mask = left_padded(width, &(Tensor::arange(b, opts) * 3));
            let mut runs = vec![(Some("p"), None), (None, None)];
            paths::for_each("prefill_gives_the_last_position", |path| {
                runs.extend([(None, Some(path)), (Some("p"), Some(path))])
            });
            for (adapter, path) in runs {
                let mut full = KvCache::new(&model, b, width + 2);
                let mut last = KvCache::new(&model, b, width + 2);
                let scoped = path.is_some();
                let _forced = path.map(paths::force);
                let scope = scoped.then(|| DecodeThreads::enter_fused(b, Kind::Float, Device::Cpu));
                let want = model
                    .forward_cached(&ids, &mask, &mut full, adapter)
                    .unwrap()
                    .narrow(1, width - 1, 1);
                let got = model.prefill(&ids, &mask, &mut last, adapter).unwrap();
                drop(scope);
                assert_eq!(got.size(), [b, 1, cfg.hidden_size]);
                let d = max_diff(&got, &want);
                assert!(d < 1e-5, "{preset} {adapter:?} {path:?}: differs by {d}");
                for n in 0..cfg.num_layers as usize {
                    let ((fk, fv), (lk, lv)) = (full.layer(n), last.layer(n));
                    assert!(
                        fk.equal(lk) && fv.equal(lv),
                        "{preset} layer {n}: cache differs"
                    );
                }
            }
        }
    }

    /// Adds adapter "p" on every linear with random factors (B non-zero: it changes outputs).
    fn add_random_adapter(model: &mut Model, seed: u64) {
        let lora = LoraConfig {
            target_modules: vec!["all-linear".into()],
            ..LoraConfig::default_for(model.config().arch)
        };
        model.add_adapter("p", &lora, None, seed).unwrap();
        // From the seeded generator, not libtorch's global one (shared with the tests running
        // meanwhile): the same adapter in every run.
        for (i, mut t) in model
            .adapter_parameters("p")
            .unwrap()
            .into_iter()
            .enumerate()
        {
            let noise = crate::rng::normal_tensor(seed, &format!("adapter {i}"), &t.size(), 0.2);
            t.copy_(&noise);
        }
    }

    /// Token ids (shape) below `vocab` from the project's seeded generator: the same ids in
    /// every run, whatever other tests draw from libtorch's global generator meanwhile (a
    /// failure reproduces).
    fn token_ids(label: &str, shape: &[i64], vocab: i64) -> Tensor {
        let mut rng = crate::rng::rng_for(0, label);
        let n: i64 = shape.iter().product();
        let v: Vec<i64> = (0..n)
            .map(|_| ((crate::rng::uniform(&mut rng) * vocab as f64) as i64).min(vocab - 1))
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    /// A (b, width) i64 mask whose row i starts with `pads[i]` pads.
    fn left_padded(width: i64, pads: &Tensor) -> Tensor {
        Tensor::arange(width, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .ge_tensor(&pads.unsqueeze(1))
            .to_kind(Kind::Int64)
    }

    /// Largest |a - b| over the tensors' elements.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// The prefill and decode steps through the kernels (the decode steps by the fused layer)
    /// equal the op-by-op forward (libtorch, outside a decode scope): the hidden states, and the
    /// keys and values written into the cache. With
    /// an adapter on every product (B non-zero), left padding, GQA, random norms and biases:
    /// Qwen2 (q/k/v bias, tied embeddings) and a Llama with a bias on every product.
    #[test]
    fn fused_decode_layer_matches_the_op_by_op_forward() {
        let _grad = tch::no_grad_guard();
        for preset in ["qwen2-tiny", "llama-tiny"] {
            let mut cfg = ModelConfig::preset(preset).unwrap();
            if preset == "llama-tiny" {
                (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias) = (true, true, true);
            }
            let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 5).unwrap();
            // Random init leaves norms at 1 and biases at 0: make both matter.
            for (name, mut t) in model.base_parameters() {
                if name.ends_with("bias") || name.contains("norm") {
                    let noise = crate::rng::normal_tensor(5, &name, &t.size(), 0.3)
                        + f64::from(name.contains("norm"));
                    t.copy_(&noise);
                }
            }
            add_random_adapter(&mut model, 6);
            let (b, width) = (9i64, 6i64);
            let opts = (Kind::Int64, Device::Cpu);
            let ids = token_ids(preset, &[b, width], cfg.vocab_size);
            // Row i has i % 4 pads on the left.
            let mask = left_padded(width, &Tensor::arange(b, opts).remainder(4));
            paths::for_each("fused_decode_layer_matches_the_op_by_op_forward", |path| {
                let what = format!("{preset} {path:?}");
                for adapter in [Some("p"), None] {
                    compare_with_libtorch(&model, &ids, &mask, adapter, &what);
                }
            });
        }
    }

    /// The kernels against the op-by-op libtorch forward over the shapes `generate` meets:
    /// thirteen batch sizes from 1 to 32 (below, at and above the packed kernels' 6 (AVX2) and
    /// 14 (AVX-512) rows a pass, up to the kernels' limit),
    /// MHA, GQA and MQA, an adapter on every product and none, left padding of 0-3 tokens;
    /// Llama-family models (the fused layer, and the prefill too, as
    /// `generate` runs them) and GPT-2 (the op-by-op kernels, from 8 rows); on every SIMD
    /// path of this CPU.
    #[test]
    fn every_kernel_path_matches_libtorch_over_batch_gqa_lora_and_padding() {
        let _grad = tch::no_grad_guard();
        let mut models = vec![];
        for (preset, kv_heads) in [
            ("llama-tiny", 4),
            ("llama-tiny", 2),
            ("llama-tiny", 1),
            ("qwen2-tiny", 0),
            ("gpt2-tiny", 0),
        ] {
            let mut cfg = ModelConfig::preset(preset).unwrap();
            if kv_heads > 0 {
                cfg.num_kv_heads = kv_heads;
            }
            let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 11).unwrap();
            add_random_adapter(&mut model, 12);
            models.push((format!("{preset} kv_heads {}", cfg.num_kv_heads), model));
        }
        let opts = (Kind::Int64, Device::Cpu);
        let ran = paths::for_each("every_kernel_path_matches_libtorch", |path| {
            for (name, model) in &models {
                let gpt2 = model.config().arch == crate::config::Arch::Gpt2;
                for b in [1i64, 2, 3, 5, 8, 9, 14, 15, 16, 17, 24, 31, 32] {
                    if gpt2 && b < 8 {
                        continue;
                    }
                    let width = 5;
                    let what = format!("{name} {path:?} batch {b}");
                    let ids = token_ids(&what, &[b, width], model.config().vocab_size);
                    let mask = left_padded(width, &Tensor::arange(b, opts).remainder(4));
                    for adapter in [Some("p"), None] {
                        compare_with_libtorch(model, &ids, &mask, adapter, &what);
                    }
                }
            }
        });
        assert!(ran > 0 || std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some());
    }

    /// Runs a prefill of `ids` and three decode steps through the kernels as `generate` does
    /// (on the path forced on this thread) and through libtorch outside a decode scope, and
    /// asserts the same hidden states and KV caches (within float rounding) and, for a
    /// Llama-family model, that every decode step ran the fused layers.
    fn compare_with_libtorch(
        model: &Model,
        ids: &Tensor,
        mask: &Tensor,
        adapter: Option<&str>,
        what: &str,
    ) {
        let cfg = model.config();
        let llama = cfg.arch != crate::config::Arch::Gpt2;
        let (b, width) = (ids.size()[0], ids.size()[1]);
        let opts = (Kind::Int64, Device::Cpu);
        let mut plain = KvCache::new(model, b, width + 4);
        let mut fused = KvCache::new(model, b, width + 4);
        let scope = || match llama {
            true => DecodeThreads::enter_fused(b, Kind::Float, Device::Cpu),
            false => DecodeThreads::enter(b, Kind::Float, Device::Cpu),
        };
        let want = model
            .forward_cached(ids, mask, &mut plain, adapter)
            .unwrap();
        // The prefill in the kernels where `generate` runs it there (Llama).
        let prefill_scope = (llama && crate::decode_kernels::prefill_kernels()).then(scope);
        let got = model
            .forward_cached(ids, mask, &mut fused, adapter)
            .unwrap();
        drop(prefill_scope);
        let d = max_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{what} {adapter:?} prefill: hidden differs by {d}"
        );
        for step in 0..3 {
            let next = token_ids(
                &format!("{what} {adapter:?} {step}"),
                &[b, 1],
                cfg.vocab_size,
            );
            let ones = Tensor::ones([b, 1], opts);
            let want = model
                .forward_cached(&next, &ones, &mut plain, adapter)
                .unwrap();
            let decode = scope();
            let before = layer::fused_steps();
            let got = model
                .forward_cached(&next, &ones, &mut fused, adapter)
                .unwrap();
            let ran = layer::fused_steps() - before;
            drop(decode);
            if llama {
                assert_eq!(ran, cfg.num_layers as usize, "{what}: fused layers run");
            }
            let d = max_diff(&got, &want);
            assert!(
                d < 1e-4,
                "{what} {adapter:?} step {step}: hidden differs by {d}"
            );
            for n in 0..cfg.num_layers as usize {
                let ((pk, pv), (fk, fv)) = (plain.layer(n), fused.layer(n));
                let d = max_diff(pk, fk).max(max_diff(pv, fv));
                assert!(d < 1e-4, "{what} layer {n}: cache differs by {d}");
            }
        }
    }
}
