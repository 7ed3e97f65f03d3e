//! GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm blocks, fused q/k/v
//! projection `c_attn`, GELU (tanh) MLP. Checkpoint weights are Conv1D, stored (in, out);
//! they are transposed on load and back on save. Reference: transformers
//! `models/gpt2/modeling_gpt2.py`. Names with or without the `transformer.` prefix load.

use tch::Tensor;

use crate::config::ModelConfig;
use crate::error::{NnError, Result};
use crate::kv_cache::KvCache;
use crate::layers::{Ctx, LayerNorm, Linear};
use crate::loader::{push_linear, Loader};

pub(crate) struct Gpt2Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_c_proj: Linear,
}

pub(crate) struct Gpt2 {
    pub wte: Tensor,
    wpe: Tensor,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    num_heads: i64,
    head_dim: i64,
    max_positions: i64,
}

impl Gpt2 {
    pub fn load(ld: &mut Loader, cfg: &ModelConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        ld.ck
            .discard(|k| k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias"));
        let wte = ld.tensor("wte.weight", &[cfg.vocab_size, h])?;
        let wpe = ld.tensor("wpe.weight", &[cfg.max_position_embeddings, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for n in 0..cfg.num_layers {
            let p = format!("h.{n}");
            blocks.push(Gpt2Block {
                ln_1: ld.layer_norm(&format!("{p}.ln_1"), h, cfg.norm_eps)?,
                c_attn: ld.linear(&format!("{p}.attn.c_attn"), h, 3 * h, true, true)?,
                attn_c_proj: ld.linear(&format!("{p}.attn.c_proj"), h, h, true, true)?,
                ln_2: ld.layer_norm(&format!("{p}.ln_2"), h, cfg.norm_eps)?,
                c_fc: ld.linear(&format!("{p}.mlp.c_fc"), h, i, true, true)?,
                mlp_c_proj: ld.linear(&format!("{p}.mlp.c_proj"), i, h, true, true)?,
            });
        }
        let ln_f = ld.layer_norm("ln_f", h, cfg.norm_eps)?;
        Ok(Gpt2 {
            wte,
            wpe,
            h: blocks,
            ln_f,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// `input_ids` (b, t) -> final-norm hidden (b, t, hidden).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        ctx: Ctx,
    ) -> Result<Tensor> {
        let t = input_ids.size()[1];
        let kind = self.wte.kind();
        let frame = crate::kv_cache::Frame::new(mask, cache.as_deref_mut(), kind)?;
        let max_pos = frame.positions.max().int64_value(&[]);
        if max_pos >= self.max_positions {
            return Err(NnError::Argument(format!(
                "sequence position {max_pos} is beyond n_positions {} of this GPT-2 model",
                self.max_positions
            )));
        }
        let mut x = Tensor::embedding(&self.wte, input_ids, -1, false, false)
            + Tensor::embedding(&self.wpe, &frame.positions, -1, false, false);
        for (n, block) in self.h.iter().enumerate() {
            x = block.forward(
                &x,
                &frame.attn_mask,
                cache.as_deref_mut().map(|c| (c, n)),
                ctx,
                self,
            )?;
        }
        if let Some(c) = cache {
            c.commit(t);
        }
        Ok(self.ln_f.forward(&x))
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.h
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_c_proj, &b.c_fc, &b.mlp_c_proj])
            .collect()
    }

    pub fn named_tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}wte.weight"), self.wte.shallow_clone()));
        out.push((format!("{prefix}wpe.weight"), self.wpe.shallow_clone()));
        for (n, b) in self.h.iter().enumerate() {
            let p = format!("{prefix}h.{n}");
            for (name, ln) in [("ln_1", &b.ln_1), ("ln_2", &b.ln_2)] {
                out.push((format!("{p}.{name}.weight"), ln.weight.shallow_clone()));
                out.push((format!("{p}.{name}.bias"), ln.bias.shallow_clone()));
            }
            for lin in [&b.c_attn, &b.attn_c_proj, &b.c_fc, &b.mlp_c_proj] {
                push_linear(out, lin);
            }
        }
        out.push((
            format!("{prefix}ln_f.weight"),
            self.ln_f.weight.shallow_clone(),
        ));
        out.push((format!("{prefix}ln_f.bias"), self.ln_f.bias.shallow_clone()));
    }
}

impl Gpt2Block {
    fn forward(
        &self,
        x: &Tensor,
        attn_mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        ctx: Ctx,
        m: &Gpt2,
    ) -> Result<Tensor> {
        let (b, t, hs) = (x.size()[0], x.size()[1], x.size()[2]);
        let h = self.ln_1.forward(x);
        let qkv = self.c_attn.forward(&h, ctx);
        let split = |i: i64| {
            qkv.narrow(2, i * hs, hs)
                .view([b, t, m.num_heads, m.head_dim])
                .transpose(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let (k, v) = match cache {
            Some((c, n)) => c.store(n, &k, &v)?,
            None => (k, v),
        };
        let a = crate::decode_kernels::attention::sdpa(&q, &k, &v, attn_mask, false)?;
        let a = a.transpose(1, 2).reshape([b, t, hs]);
        let x = x + self.attn_c_proj.forward(&a, ctx);
        let h = self.ln_2.forward(&x);
        let mlp = self.c_fc.forward(&h, ctx).gelu("tanh");
        Ok(x + self.mlp_c_proj.forward(&mlp, ctx))
    }
}
