//! All-position scoring of (prompt, response) batches: next-token log-probabilities,
//! entropies and head values, with grad when `train` is true (no grad otherwise). Log-softmax
//! runs in f32 whatever the model dtype.

use tch::{Kind, Tensor};

use crate::batch::SeqBatch;
use crate::error::Result;
use crate::Model;

/// What one forward pass produced; each per-position tensor is (b, L-1) f32. Log-probs and
/// entropies are computed from the batch's first response position on (the shortest prompt's
/// last token) and are 0 before it: read them at response positions (`response_mask`).
pub struct Outputs {
    /// log p(next token).
    pub logprobs: Tensor,
    /// Entropy of the next-token distribution (when asked).
    pub entropy: Option<Tensor>,
    /// Head value at each position (when asked; needs an adapter head).
    pub values: Option<Tensor>,
}

/// Grad mode for one scoring call: a no-grad guard (held by the caller for the whole call,
/// head included, since adapter weights require grad) unless training.
fn grad_mode(train: bool) -> Option<tch::NoGradGuard> {
    (!train).then(tch::no_grad_guard)
}

/// Whether [`forward_outputs`] computes the entropy of the next-token distribution, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entropy {
    /// Not computed.
    Off,
    /// Computed without grad even when training: a metric. Its softmax over the vocabulary
    /// is then freed at once instead of staying in the autograd graph until the step ends.
    Reported,
    /// Computed with grad when training: a term of the loss (an entropy bonus).
    Trained,
}

/// One forward producing log-probs, and optionally entropies and head values.
pub fn forward_outputs(
    model: &Model,
    adapter: Option<&str>,
    batch: &SeqBatch,
    train: bool,
    entropy: Entropy,
    values: bool,
) -> Result<Outputs> {
    let _guard = grad_mode(train);
    let hidden = model.forward_batch(batch, adapter, train)?;
    let l = hidden.size()[1];
    let h = hidden.narrow(1, 0, l - 1);
    // Logits only from the batch's first response position: at a 256-token prompt and a
    // 150k vocabulary the prompt positions' logits (and their softmax and gradients) would
    // be most of an update's memory, and nothing reads them.
    let start = response_window_start(batch).min(l - 1);
    let window = h.narrow(1, start, l - 1 - start);
    let logits = model
        .lm_logits(&window, adapter, train)?
        .to_kind(Kind::Float);
    let lse = logits.logsumexp([-1], false);
    let targets = batch.targets.narrow(1, start, l - 1 - start);
    let picked = logits
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let logprobs = left_zeros(picked - &lse, start);
    let entropy_of = |logits: &Tensor, lse: &Tensor| {
        let p = logits.softmax(-1, Kind::Float);
        left_zeros(
            lse - (p * logits).sum_dim_intlist(-1, false, Kind::Float),
            start,
        )
    };
    let entropy = match entropy {
        Entropy::Off => None,
        Entropy::Trained => Some(entropy_of(&logits, &lse)),
        Entropy::Reported => Some(tch::no_grad(|| entropy_of(&logits, &lse))),
    };
    let values = if values {
        Some(model.head(adapter, &h)?)
    } else {
        None
    };
    Ok(Outputs {
        logprobs,
        entropy,
        values,
    })
}

/// The first position (of the L-1 next-token positions) that predicts a response token in
/// any row: the shortest prompt's last token.
fn response_window_start(batch: &SeqBatch) -> i64 {
    batch.prompt_lens.iter().copied().min().unwrap_or(1).max(1) as i64 - 1
}

/// `x` (b, n) with `start` zero columns before it: (b, start + n).
fn left_zeros(x: Tensor, start: i64) -> Tensor {
    if start == 0 {
        return x;
    }
    let zeros = Tensor::zeros([x.size()[0], start], (x.kind(), x.device()));
    Tensor::cat(&[zeros, x], 1)
}

/// log p(next token) at every position (b, L-1).
pub fn token_logprobs(
    model: &Model,
    adapter: Option<&str>,
    batch: &SeqBatch,
    train: bool,
) -> Result<Tensor> {
    Ok(forward_outputs(model, adapter, batch, train, Entropy::Off, false)?.logprobs)
}

/// (log p(next token), entropy) at every position, each (b, L-1); with grad through both
/// when `train`.
pub fn token_logprobs_entropy(
    model: &Model,
    adapter: Option<&str>,
    batch: &SeqBatch,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let o = forward_outputs(model, adapter, batch, train, Entropy::Trained, false)?;
    let e = o.entropy.unwrap_or_else(|| Tensor::zeros_like(&o.logprobs));
    Ok((o.logprobs, e))
}

/// Head values at positions 0..L-1 (b, L-1): the value of the state before each next token.
pub fn token_values(
    model: &Model,
    adapter: Option<&str>,
    batch: &SeqBatch,
    train: bool,
) -> Result<Tensor> {
    let _guard = grad_mode(train);
    let hidden = model.forward_batch(batch, adapter, train)?;
    let l = hidden.size()[1];
    model.head(adapter, &hidden.narrow(1, 0, l - 1))
}

/// Head value at each row's last token (b,) f32: a reward model's score. Where the model's
/// config names a `pad_token_id`, the last token that is not it, as transformers'
/// *ForSequenceClassification reads it (a response ending in an EOS that doubles as the pad
/// token is scored at the token before; training and scoring both go through here).
pub fn last_token_scores(
    model: &Model,
    adapter: Option<&str>,
    batch: &SeqBatch,
    train: bool,
) -> Result<Tensor> {
    let _guard = grad_mode(train);
    let last = match model.config().pad_token_id {
        Some(pad) => batch.last_non_pad_index(pad)?,
        None => batch.last_index.shallow_clone(),
    };
    // (b, 1, h): the last layer runs those positions alone
    let hidden = model.forward_batch_at(batch, adapter, train, &last)?;
    Ok(model.head(adapter, &hidden)?.squeeze_dim(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoraConfig, ModelConfig};
    use tch::Device;

    /// A reported entropy has the trained one's values, without grad (so nothing of it stays in
    /// the autograd graph), while the log-probs keep theirs.
    #[test]
    fn a_reported_entropy_is_the_trained_one_without_grad() {
        let cfg = ModelConfig::preset("llama-tiny").unwrap();
        let mut m = Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap();
        m.add_adapter("p", &LoraConfig::default_for(cfg.arch), None, 4)
            .unwrap();
        let rows = vec![(vec![5, 9, 17], vec![4, 8, 1]), (vec![7, 2], vec![11, 12])];
        let batch = SeqBatch::new(&rows, 0, Device::Cpu).unwrap();
        let out = |e| forward_outputs(&m, Some("p"), &batch, true, e, false).unwrap();
        let (reported, trained) = (out(Entropy::Reported), out(Entropy::Trained));
        assert!(reported.logprobs.requires_grad() && trained.logprobs.requires_grad());
        let (r, t) = (reported.entropy.unwrap(), trained.entropy.unwrap());
        assert!(!r.requires_grad(), "a reported entropy carries grad");
        assert!(t.requires_grad(), "a trained entropy carries no grad");
        let bits = |x: &Tensor| {
            Vec::<f32>::try_from(x.detach().flatten(0, -1))
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&r), bits(&t));
        assert!(out(Entropy::Off).entropy.is_none());
    }
}
