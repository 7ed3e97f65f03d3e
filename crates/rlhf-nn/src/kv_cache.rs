//! The key/value cache for incremental decoding: explicit state owned by the caller
//! (see [`crate::Model::forward_cached`]). Keys and values are preallocated to a capacity
//! (prompt length + max new tokens) and written in place; the cache also keeps the attention
//! mask of every cached token and each row's next position, so left-padded prompts decode with
//! the same positions transformers uses (cumsum of the mask - 1).

use tch::{Kind, Tensor};

use crate::error::{NnError, Result};
use crate::layers::{attention_mask, positions};
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
}

impl Frame {
    /// `mask` (b, t): 1 for tokens, 0 for pads, of the tokens in this call.
    pub fn new(mask: &Tensor, cache: Option<&mut KvCache>, kind: Kind) -> Result<Frame> {
        let (b, t) = (mask.size()[0], mask.size()[1]);
        let mask = mask.to_kind(Kind::Int64);
        match cache {
            None => Ok(Frame {
                positions: positions(&mask, None),
                attn_mask: attention_mask(&mask, t, 0, kind),
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
                let pos = positions(&mask, Some(&c.next_pos));
                c.next_pos = &c.next_pos + mask.sum_dim_intlist(1, false, Kind::Int64);
                let key_mask = c.mask.narrow(1, 0, c.len + t);
                Ok(Frame {
                    positions: pos,
                    attn_mask: attention_mask(&key_mask, t, c.len, kind),
                })
            }
        }
    }
}
