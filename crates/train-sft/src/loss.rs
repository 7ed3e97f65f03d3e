//! The SFT objective: next-token negative log-likelihood on completion tokens only. A batch
//! is right-padded `prompt ++ completion`; the positions whose NEXT token is a completion
//! token are listed up front (`positions`, flat indices into (batch, seq-1)), and only their
//! hidden states go through the LM head, so prompt and padding positions contribute neither
//! to the loss nor to its gradient (and cost no LM-head compute).

use rlhf_nn::Model;
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::Example;

/// A micro-batch on the device.
#[derive(Debug)]
pub struct SftBatch {
    /// (batch, seq) i64, right-padded with the pad id.
    pub input_ids: Tensor,
    /// (batch, seq) i64: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// (n,) i64: flat indices into (batch, seq - 1) of the positions predicting a
    /// completion token.
    pub positions: Tensor,
    /// (n,) i64: the completion tokens predicted at `positions`.
    pub targets: Tensor,
    /// n: completion tokens in the batch (the loss normaliser).
    pub num_targets: usize,
    /// Real (non-pad) tokens in the batch (throughput).
    pub num_tokens: usize,
}

impl SftBatch {
    /// Builds the batch of `examples` (each with at least one completion token).
    pub fn new(examples: &[&Example], pad_id: i64, device: Device) -> SftBatch {
        let b = examples.len();
        let seq = examples.iter().map(|e| e.len()).max().unwrap_or(0).max(2);
        let mut ids = vec![pad_id; b * seq];
        let mut mask = vec![0i64; b * seq];
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut num_tokens = 0;
        for (row, e) in examples.iter().enumerate() {
            let tokens = e.prompt.iter().chain(&e.response);
            for (t, &tok) in tokens.enumerate() {
                ids[row * seq + t] = tok as i64;
                mask[row * seq + t] = 1;
            }
            num_tokens += e.len();
            // Position t predicts token t + 1; completion tokens sit at
            // [prompt_len, len), so they are predicted from [prompt_len - 1, len - 1).
            // A completion at the very start (empty prompt) has no predicting position for
            // its first token.
            let first = e.prompt.len().max(1) - 1;
            for t in first..e.len() - 1 {
                positions.push((row * (seq - 1) + t) as i64);
                targets.push(ids[row * seq + t + 1]);
            }
        }
        let to = |v: &[i64], shape: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        SftBatch {
            input_ids: to(&ids, &[b as i64, seq as i64]),
            attention_mask: to(&mask, &[b as i64, seq as i64]),
            num_targets: targets.len(),
            positions: to(&positions, &[positions.len() as i64]),
            targets: to(&targets, &[targets.len() as i64]),
            num_tokens,
        }
    }
}

/// Sum of the completion tokens' negative log-likelihoods (a scalar f32 tensor, with grad
/// when the model's trainable tensors require it). `train` enables LoRA dropout.
pub fn completion_nll_sum(
    model: &Model,
    adapter: Option<&str>,
    batch: &SftBatch,
    train: bool,
) -> rlhf_nn::error::Result<Tensor> {
    let hidden = model.forward(&batch.input_ids, &batch.attention_mask, adapter, train)?;
    let (b, s, h) = hidden.size3().map_err(|e| {
        rlhf_nn::NnError::Argument(format!("hidden states: expected (batch, seq, hidden): {e}"))
    })?;
    let picked = hidden
        .narrow(1, 0, s - 1)
        .reshape([b * (s - 1), h])
        .index_select(0, &batch.positions);
    let logits = model
        .lm_logits(&picked, adapter, train)?
        .to_kind(Kind::Float);
    Ok(logits.cross_entropy_loss::<Tensor>(&batch.targets, None, Reduction::Sum, -100, 0.0))
}

/// Mean completion NLL of `examples` under the model (no grad, dropout off), and the number
/// of completion tokens, in batches of `batch_size`.
pub fn evaluate(
    model: &Model,
    adapter: Option<&str>,
    examples: &[Example],
    batches: &[Vec<usize>],
    pad_id: i64,
) -> rlhf_nn::error::Result<(f64, usize)> {
    let _guard = tch::no_grad_guard();
    let mut sum = 0.0;
    let mut count = 0;
    for idx in batches {
        let refs: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = SftBatch::new(&refs, pad_id, model.device());
        sum += completion_nll_sum(model, adapter, &batch, false)?.double_value(&[]);
        count += batch.num_targets;
    }
    Ok((sum / count.max(1) as f64, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_exactly_the_completion_targets() {
        let a = Example {
            prompt: vec![10, 11, 12],
            response: vec![20, 21],
        };
        let b = Example {
            prompt: vec![13],
            response: vec![22, 23, 24, 25],
        };
        let batch = SftBatch::new(&[&a, &b], 0, Device::Cpu);
        assert_eq!(batch.input_ids.size(), vec![2, 5]);
        // Row 0: seq-1 = 4 positions; 20 is predicted at t=2, 21 at t=3.
        // Row 1: 22 at t=0, 23 at 1, 24 at 2, 25 at 3 (offset 4).
        assert_eq!(
            Vec::<i64>::try_from(&batch.positions).unwrap(),
            vec![2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            Vec::<i64>::try_from(&batch.targets).unwrap(),
            vec![20, 21, 22, 23, 24, 25]
        );
        assert_eq!(batch.num_targets, 6);
        assert_eq!(batch.num_tokens, 10);
        assert_eq!(
            Vec::<i64>::try_from(&batch.attention_mask.view([-1])).unwrap(),
            vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        );
        let c = Example {
            prompt: vec![1],
            response: vec![2],
        };
        let batch = SftBatch::new(&[&b, &c], 0, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(&batch.input_ids.view([-1])).unwrap(),
            vec![13, 22, 23, 24, 25, 1, 2, 0, 0, 0]
        );
        assert_eq!(
            Vec::<i64>::try_from(&batch.positions).unwrap(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            Vec::<i64>::try_from(&batch.targets).unwrap(),
            vec![22, 23, 24, 25, 2]
        );
    }
}
