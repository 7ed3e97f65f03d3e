//! A right-padded batch of (prompt, response) token sequences for scoring and training, with
//! the masks that select response positions. Position j of the (b, L-1) per-token tensors
//! refers to predicting token j+1 from tokens 0..=j.

use tch::{Device, Kind, Tensor};

use crate::error::{NnError, Result};

/// One prompt and its response (an SFT completion, a scored or sampled response) as token
/// ids: a row of a [`SeqBatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PromptResponse {
    /// Prompt tokens; never trained on.
    pub prompt: Vec<i32>,
    /// Response tokens.
    pub response: Vec<i32>,
}

impl PromptResponse {
    /// Total length in tokens.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    /// True when the sequence has no token at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of `prompt ++ response` rows, right-padded to the longest.
pub struct SeqBatch {
    /// (b, L) i64.
    pub input_ids: Tensor,
    /// (b, L) i64, 1 = token, 0 = pad.
    pub attention_mask: Tensor,
    /// (b, L-1) i64: the next token at each position (`input_ids[:, 1:]`).
    pub targets: Tensor,
    /// (b, L-1) f32: 1 where the next token is a response token.
    pub response_mask: Tensor,
    /// (b,) i64: index of each row's last token.
    pub last_index: Tensor,
    /// Prompt length of each row.
    pub prompt_lens: Vec<usize>,
    /// Response length of each row.
    pub response_lens: Vec<usize>,
    /// The rows grouped by prompt: rows whose prompt tokens are identical (the K samples of
    /// one prompt) share a group; groups in order of their first row, rows in order.
    pub prompt_groups: Vec<Vec<usize>>,
    /// `input_ids` on the host, row-major (b x L), for [`crate::Model::forward_batch`]'s
    /// shared prompts (no copy back from a GPU).
    host_ids: Vec<i64>,
}

impl SeqBatch {
    /// Builds the batch on `device`. Each row needs a non-empty prompt; responses may be
    /// empty (then the row has no response positions).
    pub fn new<P: AsRef<[i32]>, R: AsRef<[i32]>>(
        rows: &[(P, R)],
        pad_id: i32,
        device: Device,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(NnError::Argument("SeqBatch: no rows".into()));
        }
        let lens: Vec<usize> = rows
            .iter()
            .map(|(p, r)| p.as_ref().len() + r.as_ref().len())
            .collect();
        let width = lens.iter().copied().max().unwrap_or(0).max(2);
        let b = rows.len();
        let mut ids = vec![pad_id as i64; b * width];
        let mut mask = vec![0i64; b * width];
        let mut resp = vec![0f32; b * (width - 1)];
        let mut last = Vec::with_capacity(b);
        let mut prompt_lens = Vec::with_capacity(b);
        let mut response_lens = Vec::with_capacity(b);
        for (i, (p, r)) in rows.iter().enumerate() {
            let (p, r) = (p.as_ref(), r.as_ref());
            if p.is_empty() {
                return Err(NnError::Argument(format!(
                    "SeqBatch: row {i} has an empty prompt"
                )));
            }
            for (j, &t) in p.iter().chain(r.iter()).enumerate() {
                ids[i * width + j] = t as i64;
                mask[i * width + j] = 1;
            }
            for j in 0..r.len() {
                // The response token at index p.len() + j is predicted at position p.len() + j - 1.
                resp[i * (width - 1) + p.len() + j - 1] = 1.0;
            }
            last.push((lens[i] - 1) as i64);
            prompt_lens.push(p.len());
            response_lens.push(r.len());
        }
        let w = width as i64;
        let input_ids = Tensor::from_slice(&ids)
            .view([b as i64, w])
            .to_device(device);
        let attention_mask = Tensor::from_slice(&mask)
            .view([b as i64, w])
            .to_device(device);
        let targets = input_ids.narrow(1, 1, w - 1).contiguous();
        let response_mask = Tensor::from_slice(&resp)
            .view([b as i64, w - 1])
            .to_device(device);
        let last_index = Tensor::from_slice(&last).to_device(device);
        let mut prompt_groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: std::collections::HashMap<&[i32], usize> = Default::default();
        for (i, (p, _)) in rows.iter().enumerate() {
            let g = *group_of.entry(p.as_ref()).or_insert_with(|| {
                prompt_groups.push(Vec::new());
                prompt_groups.len() - 1
            });
            prompt_groups[g].push(i);
        }
        Ok(SeqBatch {
            input_ids,
            attention_mask,
            targets,
            response_mask,
            last_index,
            prompt_lens,
            response_lens,
            prompt_groups,
            host_ids: ids,
        })
    }

    /// (b,) i64: the position transformers' *ForSequenceClassification reads a row's score at
    /// when the model's `pad_token_id` is `pad`: the last token that is not `pad` (so a
    /// response ending in an EOS that is also the pad token is scored before it), or the
    /// first position when every token is `pad`.
    pub fn last_non_pad_index(&self, pad: i64) -> Result<Tensor> {
        let w = self.input_ids.size()[1] as usize;
        let ids = Vec::<i64>::try_from(self.input_ids.to_device(Device::Cpu).view([-1]))?;
        let last: Vec<i64> = (0..self.len())
            .map(|i| {
                let len = self.prompt_lens[i] + self.response_lens[i];
                let row = &ids[i * w..i * w + len];
                row.iter().rposition(|&t| t != pad).unwrap_or(0) as i64
            })
            .collect();
        Ok(Tensor::from_slice(&last).to_device(self.input_ids.device()))
    }

    /// Whether [`crate::Model::forward_batch`] runs each prompt that rows share once: when
    /// that leaves out at least an eighth of the token rows the forward computes, padding
    /// included (the ordinary forward: every row at the batch's width; the shared one: each
    /// distinct prompt at the longest prompt's length, each response at the longest
    /// response's). The prompts and the responses then run as two forwards, a second round of
    /// every layer's operations, which a small saving does not pay for; GRPO's K samples of
    /// a prompt save most of the prompt rows (the `rl_loop` bench's groups of 4 x 64-token
    /// responses to 31-39-token prompts: 24-28%).
    pub fn shares_prompts(&self) -> bool {
        if self.prompt_groups.len() == self.len() {
            return false;
        }
        let width = self.input_ids.size()[1] as usize;
        let ordinary = self.len() * width;
        let prompt = self.prompt_lens.iter().copied().max().unwrap_or(0);
        let response = self.response_lens.iter().copied().max().unwrap_or(0).max(1);
        let shared = self.prompt_groups.len() * prompt + self.len() * response;
        8 * ordinary.saturating_sub(shared) >= ordinary
    }

    /// `input_ids` on the host, row-major (b x L).
    pub(crate) fn host_ids(&self) -> &[i64] {
        &self.host_ids
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.prompt_lens.len()
    }

    /// True when there are no rows (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.prompt_lens.is_empty()
    }

    /// Splits a per-position tensor (b, L-1) into each row's response values, in order
    /// (e.g. the logprob of every response token).
    pub fn response_values(&self, per_position: &Tensor) -> Result<Vec<Vec<f32>>> {
        let t = per_position
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let size = t.size();
        let width = self.input_ids.size()[1] - 1;
        if size != [self.len() as i64, width] {
            return Err(NnError::Argument(format!(
                "response_values: expected shape [{}, {width}], found {size:?}",
                self.len()
            )));
        }
        let flat = Vec::<f32>::try_from(t.view([-1]))?;
        let w = width as usize;
        Ok((0..self.len())
            .map(|i| {
                let start = i * w + self.prompt_lens[i] - 1;
                flat[start..start + self.response_lens[i]].to_vec()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_mark_response_positions() {
        let rows = vec![(vec![5, 6], vec![7, 8, 9]), (vec![1, 2, 3], vec![4])];
        let b = SeqBatch::new(&rows, 0, Device::Cpu).unwrap();
        assert_eq!(b.input_ids.size(), [2, 5]);
        let m = Vec::<f32>::try_from(b.response_mask.view([-1])).unwrap();
        assert_eq!(m, vec![0., 1., 1., 1., 0., 0., 1., 0.]);
        let t = Vec::<i64>::try_from(b.targets.view([-1])).unwrap();
        assert_eq!(t, vec![6, 7, 8, 9, 2, 3, 4, 0]);
        assert_eq!(Vec::<i64>::try_from(&b.last_index).unwrap(), vec![4, 3]);
        let per = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([2, 4]);
        assert_eq!(
            b.response_values(&per).unwrap(),
            vec![vec![1., 2., 3.], vec![6.]]
        );
        assert!(SeqBatch::new(&[(vec![], vec![1])], 0, Device::Cpu).is_err());
    }

    #[test]
    fn rows_with_the_same_prompt_share_a_group() {
        let rows = [
            (vec![5, 6], vec![7]),
            (vec![5], vec![6, 7]),
            (vec![5, 6], vec![8, 9]),
            (vec![1], vec![]),
            (vec![5, 6], vec![]),
        ];
        let b = SeqBatch::new(&rows, 0, Device::Cpu).unwrap();
        assert_eq!(b.prompt_groups, vec![vec![0, 2, 4], vec![1], vec![3]]);
        // 5 rows of width 4 (20 token rows) against 3 prompts of 2 and 5 responses of 2 (16)
        assert!(b.shares_prompts());
        // 4 rows of 8 (32) against a prompt of 6 and 4 responses of 2 (14)
        let group: Vec<_> = (0..4)
            .map(|i| (vec![1, 2, 3, 4, 5, 6], vec![7, i]))
            .collect();
        assert!(SeqBatch::new(&group, 0, Device::Cpu)
            .unwrap()
            .shares_prompts());
        // 2 rows of 12 (24) against a prompt of 2 and 2 responses of 10 (22): under an eighth
        let pairs = [(vec![1, 2], vec![3; 10]), (vec![1, 2], vec![4; 10])];
        assert!(!SeqBatch::new(&pairs, 0, Device::Cpu)
            .unwrap()
            .shares_prompts());
        // a long prompt's group beside a long response: padding would eat the saving
        let mixed: Vec<_> = (0..4)
            .map(|i| (vec![9; 100], vec![i]))
            .chain((0..4).map(|i| (vec![i], vec![8; 100])))
            .collect();
        assert!(!SeqBatch::new(&mixed, 0, Device::Cpu)
            .unwrap()
            .shares_prompts());
    }

    /// transformers' rule for the score position: the last token that is not the pad id,
    /// skipping a trailing EOS that doubles as pad, never the right padding.
    #[test]
    fn last_non_pad_index_skips_trailing_pad_ids() {
        let rows = [
            (vec![5, 6], vec![7, 2]),    // ends in 2 (= pad = EOS)
            (vec![5], vec![7, 8]),       // no pad id: the last token
            (vec![2, 2], vec![2]),       // only pad ids: position 0
            (vec![5, 2], vec![7, 2, 2]), // a pad id inside counts as a token before 7
        ];
        let b = SeqBatch::new(&rows, 2, Device::Cpu).unwrap();
        let got = Vec::<i64>::try_from(&b.last_non_pad_index(2).unwrap()).unwrap();
        assert_eq!(got, vec![2, 2, 0, 2]);
        let other = Vec::<i64>::try_from(&b.last_non_pad_index(99).unwrap()).unwrap();
        assert_eq!(other, Vec::<i64>::try_from(&b.last_index).unwrap());
    }
}
