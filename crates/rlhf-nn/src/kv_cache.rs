//! The key/value cache for incremental decoding: explicit state owned by the caller
//! (see [`crate::Model::forward_cached`]). Keys and values are preallocated to a capacity
//! (prompt length + max new tokens) and written in place; the cache also keeps the attention
//! mask of every cached token and each row's next position, so left-padded prompts decode with
//! the same positions transformers uses (cumsum of the mask - 1).

use tch::{Device, Kind, Tensor};

use crate::error::{NnError, Result};
use crate::layers::{attention_mask, masked_value, positions};
use crate::Model;

/// Per-layer keys and values for a batch, plus the token mask and positions.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// (b, capacity) i64, 1 = real token.
    mask: Tensor,
    /// Next position of each row (b,) i64: the number of real tokens so far.
    next_pos: Tensor,
    len: i64,
    capacity: i64,
    batch: i64,
}

impl KvCache {
    /// An empty cache for `batch` rows and at most `capacity` tokens per row.
    pub fn new(model: &Model, batch: i64, capacity: i64) -> Self {
        let cfg = model.config();
        let opts = (model.kind(), model.device());
        let shape = [batch, cfg.num_kv_heads, capacity, cfg.head_dim];
        let n = cfg.num_layers as usize;
        KvCache {
            k: (0..n).map(|_| Tensor::zeros(shape, opts)).collect(),
            v: (0..n).map(|_| Tensor::zeros(shape, opts)).collect(),
            mask: Tensor::zeros([batch, capacity], (Kind::Int64, model.device())),
            next_pos: Tensor::zeros([batch], (Kind::Int64, model.device())),
            len: 0,
            capacity,
            batch,
        }
    }

    /// The rows of `parts` in order, in one cache of `capacity` positions: each part's cached
    /// tokens end where the longest part's do (left padding, masked and zero), with their
    /// masks and next positions, so decoding continues each row as its own part would. Leading
    /// positions that are padding in every row of a part are left out (a left pad only adds
    /// exact zeros to a row's attention), so the joined cache is as long as its longest row,
    /// however long its rows have been decoding.
    pub(crate) fn join(model: &Model, parts: &[KvCache], capacity: i64) -> Result<KvCache> {
        let batch = parts.iter().map(|p| p.batch).sum();
        // Per part: the first position that is a token in some row.
        let starts = parts
            .iter()
            .map(|p| {
                let any = p.mask().sum_dim_intlist(0, false, Kind::Int64);
                let any = Vec::<i64>::try_from(any.to_device(Device::Cpu))?;
                Ok(any.iter().position(|&n| n > 0).unwrap_or(any.len()) as i64)
            })
            .collect::<Result<Vec<i64>>>()?;
        let len = parts
            .iter()
            .zip(&starts)
            .map(|(p, s)| p.len - s)
            .max()
            .unwrap_or(0);
        if len > capacity {
            return Err(NnError::Argument(format!(
                "KV cache capacity {capacity} below the {len} cached tokens of a part"
            )));
        }
        let mut out = KvCache::new(model, batch, capacity);
        let mut row = 0;
        for (p, &start) in parts.iter().zip(&starts) {
            let (b, used) = (p.batch, p.len - start);
            let off = len - used;
            for (dst, src) in out.k.iter().zip(&p.k).chain(out.v.iter().zip(&p.v)) {
                dst.narrow(0, row, b)
                    .narrow(2, off, used)
                    .f_copy_(&src.narrow(2, start, used))?;
            }
            out.mask
                .narrow(0, row, b)
                .narrow(1, off, used)
                .f_copy_(&p.mask.narrow(1, start, used))?;
            out.next_pos.narrow(0, row, b).f_copy_(&p.next_pos)?;
            row += b;
        }
        out.len = len;
        Ok(out)
    }

    /// Tokens cached per row (pads included).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// The mask of every cached token (b, len).
    pub fn mask(&self) -> Tensor {
        self.mask.narrow(1, 0, self.len)
    }

    /// Keeps only the rows `rows` (i64 indices), e.g. to drop finished sequences.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.index_select(0, rows);
        }
        self.mask = self.mask.index_select(0, rows);
        self.next_pos = self.next_pos.index_select(0, rows);
        self.batch = rows.size()[0];
    }

    /// Writes layer `n`'s new keys/values (b, kv_heads, t, d) at the current end and returns
    /// all cached keys/values (b, kv_heads, len + t, d).
    pub(crate) fn store(&mut self, n: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        self.k[n].narrow(2, self.len, t).f_copy_(k)?;
        self.v[n].narrow(2, self.len, t).f_copy_(v)?;
        Ok((
            self.k[n].narrow(2, 0, self.len + t),
            self.v[n].narrow(2, 0, self.len + t),
        ))
    }

    /// Layer `n`'s whole key and value buffers (b, kv_heads, capacity, d), for the decode
    /// kernels that write the new token in place and attend over the first `len() + 1`.
    pub(crate) fn layer(&self, n: usize) -> (&Tensor, &Tensor) {
        (&self.k[n], &self.v[n])
    }

    /// The frame of one new token per row (its mask `new` (b, 1) already written at `len`), built
    /// on the host: the same positions and mask as the general path, in a handful of copies
    /// instead of its 20-odd small ops (with the rotary tables, a few percent of a decode step;
    /// docs/performance.md). One token needs no causal part: it sees every cached key.
    fn step_frame(&mut self, new: &Tensor, kind: Kind) -> Result<Frame> {
        let b = self.batch;
        let added = Vec::<i64>::try_from(new.contiguous().view([-1]))?;
        let past = Vec::<i64>::try_from(&self.next_pos)?;
        let next: Vec<i64> = past.iter().zip(&added).map(|(p, m)| p + m).collect();
        self.next_pos = Tensor::from_slice(&next);
        let total = self.len + 1;
        let keys = Vec::<i64>::try_from(self.mask.narrow(1, 0, total).contiguous().view([-1]))?;
        let neg = masked_value(kind) as f32;
        let additive: Vec<f32> = keys
            .iter()
            .map(|&k| if k != 0 { 0.0 } else { neg })
            .collect();
        Ok(Frame {
            positions: Tensor::from_slice(&past).view([b, 1]),
            attn_mask: Tensor::from_slice(&additive)
                .view([b, 1, 1, total])
                .to_kind(kind),
            host_positions: Some(past),
        })
    }

    /// Advances the end after every layer has stored `t` tokens.
    pub(crate) fn commit(&mut self, t: i64) {
        self.len += t;
    }
}

/// Positions and attention mask of one forward call.
pub(crate) struct Frame {
    /// (b, t) i64.
    pub positions: Tensor,
    /// (b, 1, t, T) additive, in the activation kind.
    pub attn_mask: Tensor,
    /// The positions on the host, when the frame was built there (a decode step on the CPU).
    pub host_positions: Option<Vec<i64>>,
}

impl Frame {
    /// `mask` (b, t): 1 for tokens, 0 for pads, of the tokens in this call.
    pub fn new(mask: &Tensor, cache: Option<&mut KvCache>, kind: Kind) -> Result<Frame> {
        Self::build(mask, cache, kind, true)
    }

    /// [`Frame::new`]; `host` lets a decode step on the CPU build it on the host.
    fn build(mask: &Tensor, cache: Option<&mut KvCache>, kind: Kind, host: bool) -> Result<Frame> {
        let (b, t) = (mask.size()[0], mask.size()[1]);
        let mask = mask.to_kind(Kind::Int64);
        match cache {
            None => Ok(Frame {
                positions: positions(&mask, None),
                attn_mask: attention_mask(&mask, t, 0, kind),
                host_positions: None,
            }),
            Some(c) => {
                if b != c.batch {
                    return Err(NnError::Argument(format!(
                        "KV cache holds {} rows, the input has {b}",
                        c.batch
                    )));
                }
                if c.len + t > c.capacity {
                    return Err(NnError::Argument(format!(
                        "KV cache capacity {} exceeded: {} cached + {t} new tokens",
                        c.capacity, c.len
                    )));
                }
                c.mask.narrow(1, c.len, t).f_copy_(&mask)?;
                if host && t == 1 && c.mask.device() == Device::Cpu && mask.device() == Device::Cpu
                {
                    return c.step_frame(&mask, kind);
                }
                let pos = positions(&mask, Some(&c.next_pos));
                c.next_pos = &c.next_pos + mask.sum_dim_intlist(1, false, Kind::Int64);
                let key_mask = c.mask.narrow(1, 0, c.len + t);
                Ok(Frame {
                    positions: pos,
                    attn_mask: attention_mask(&key_mask, t, c.len, kind),
                    host_positions: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::{Model, ModelConfig};

    /// A decode step's frame built on the host equals the general path's: positions, the
    /// additive mask, and the cache's mask and next positions after it; with left padding,
    /// and a pad in the step itself.
    #[test]
    fn host_step_frame_equals_the_general_one() {
        let cfg = ModelConfig::preset("llama-tiny").unwrap();
        let model = Model::random(&cfg, Device::Cpu, Kind::Float, 1).unwrap();
        let ints = (Kind::Int64, Device::Cpu);
        let prompt = Tensor::from_slice(&[0i64, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]).view([3, 4]);
        let (mut host, mut general) = (KvCache::new(&model, 3, 9), KvCache::new(&model, 3, 9));
        for c in [&mut host, &mut general] {
            Frame::new(&prompt, Some(&mut *c), Kind::Float).unwrap();
            c.commit(4);
        }
        for step in [
            Tensor::ones([3, 1], ints),
            Tensor::from_slice(&[1i64, 0, 1]).view([3, 1]),
        ] {
            let a = Frame::build(&step, Some(&mut host), Kind::Float, true).unwrap();
            let b = Frame::build(&step, Some(&mut general), Kind::Float, false).unwrap();
            assert!(a.host_positions.is_some() && b.host_positions.is_none());
            assert!(a.positions.equal(&b.positions), "positions");
            assert_eq!(a.attn_mask.size(), b.attn_mask.size());
            assert!(a.attn_mask.equal(&b.attn_mask), "additive mask");
            let p = a.host_positions.unwrap();
            assert!(Tensor::from_slice(&p).view([3, 1]).equal(&b.positions));
            assert!(host.next_pos.equal(&general.next_pos), "next positions");
            host.commit(1);
            general.commit(1);
            assert!(host.mask().equal(&general.mask()), "cache mask");
        }
        // The rotary tables from the host agree with libtorch's to float rounding.
        let rope = crate::layers::Rope::new(&cfg, Device::Cpu);
        let pos = [0i64, 5, 17, 1000];
        let (c, s) = rope.cos_sin_host(&pos, Kind::Float, Device::Cpu);
        let (wc, ws) = rope.cos_sin(&Tensor::from_slice(&pos).view([4, 1]), Kind::Float);
        assert_eq!(c.size(), wc.size());
        let d = (c - wc).abs().max().double_value(&[]) + (s - ws).abs().max().double_value(&[]);
        assert!(d < 1e-5, "rotary tables differ by {d}");
    }
}
