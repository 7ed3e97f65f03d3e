//! Assembles model components from a [`Checkpoint`]: tensors by relative name (the
//! checkpoint's own prefix, `model.` / `transformer.` or none, is handled here), moved to the
//! device and dtype, linear layers numbered for the LoRA tables.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::layers::{LayerNorm, Linear, RmsNorm};
use crate::weights::Checkpoint;

pub(crate) struct Loader<'a> {
    pub ck: &'a mut Checkpoint,
    pub device: Device,
    pub kind: Kind,
    /// Prefix of body tensors in the checkpoint ("model.", "transformer." or "").
    pub src_prefix: String,
    /// Prefix written on save and used in module names ("model." or "transformer.").
    pub canon_prefix: String,
    /// Canonical module name of each linear, by id.
    pub module_names: Vec<String>,
}

impl<'a> Loader<'a> {
    /// Detects whether body tensors carry `canon_prefix` by probing `probe` (a relative name).
    pub fn new(
        ck: &'a mut Checkpoint,
        device: Device,
        kind: Kind,
        canon_prefix: &str,
        probe: &str,
    ) -> Self {
        let src_prefix = if ck.contains(&format!("{canon_prefix}{probe}")) || !ck.contains(probe) {
            canon_prefix.to_string()
        } else {
            String::new()
        };
        Loader {
            ck,
            device,
            kind,
            src_prefix,
            canon_prefix: canon_prefix.to_string(),
            module_names: Vec::new(),
        }
    }

    fn place(&self, t: Tensor) -> Tensor {
        t.to_device(self.device).to_kind(self.kind).contiguous()
    }

    /// A body tensor (relative name), shape-checked, on device in the model kind.
    pub fn tensor(&mut self, rel: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.ck.take(&format!("{}{rel}", self.src_prefix), shape)?;
        Ok(self.place(t))
    }

    /// A linear layer `rel` (e.g. `layers.0.self_attn.q_proj`). `conv1d`: stored (in, out).
    pub fn linear(
        &mut self,
        rel: &str,
        inp: i64,
        out: i64,
        bias: bool,
        conv1d: bool,
    ) -> Result<Linear> {
        let weight = if conv1d {
            self.tensor(&format!("{rel}.weight"), &[inp, out])?
                .tr()
                .contiguous()
        } else {
            self.tensor(&format!("{rel}.weight"), &[out, inp])?
        };
        let bias = if bias {
            Some(self.tensor(&format!("{rel}.bias"), &[out])?)
        } else {
            None
        };
        let id = self.module_names.len();
        let name = format!("{}{rel}", self.canon_prefix);
        self.module_names.push(name.clone());
        Ok(Linear {
            id,
            name,
            weight,
            bias,
            conv1d,
        })
    }

    pub fn rms_norm(&mut self, rel: &str, n: i64, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.tensor(&format!("{rel}.weight"), &[n])?,
            eps,
        })
    }

    pub fn layer_norm(&mut self, rel: &str, n: i64, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{rel}.weight"), &[n])?,
            bias: self.tensor(&format!("{rel}.bias"), &[n])?,
            eps,
        })
    }
}

/// Appends a linear's tensors in checkpoint layout (Conv1D transposed back).
pub(crate) fn push_linear(out: &mut Vec<(String, Tensor)>, l: &Linear) {
    let w = if l.conv1d {
        l.weight.tr().contiguous()
    } else {
        l.weight.shallow_clone()
    };
    out.push((format!("{}.weight", l.name), w));
    if let Some(b) = &l.bias {
        out.push((format!("{}.bias", l.name), b.shallow_clone()));
    }
}
