//! Ragged per-rollout vectors (one value per response token, or one per rollout) and the
//! padded tensors the algorithm math works on: padding to `(rows, longest)` with a mask,
//! unpadding, and placing values at a [`SeqBatch`]'s response positions.

use anyhow::{anyhow, Result};
use rlhf_nn::batch::SeqBatch;
use tch::{Device, Kind, Tensor};

/// Pads ragged rows to `(rows, longest)` f32 with a 0/1 mask.
pub fn pad(rows: &[Vec<f32>]) -> (Tensor, Tensor) {
    let n = rows.len();
    let w = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut v = vec![0f32; n * w];
    let mut m = vec![0f32; n * w];
    for (i, r) in rows.iter().enumerate() {
        v[i * w..i * w + r.len()].copy_from_slice(r);
        m[i * w..i * w + r.len()].fill(1.0);
    }
    let shape = [n as i64, w as i64];
    (
        Tensor::from_slice(&v).view(shape),
        Tensor::from_slice(&m).view(shape),
    )
}

/// The first `lens[i]` values of each row of a `(rows, width)` tensor.
pub fn unpad(t: &Tensor, lens: &[usize]) -> Result<Vec<Vec<f32>>> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let size = t.size();
    if size.len() != 2 || size[0] as usize != lens.len() {
        return Err(anyhow!("unpad: tensor {size:?} for {} rows", lens.len()));
    }
    let w = size[1] as usize;
    let flat = Vec::<f32>::try_from(t.view([-1]))?;
    lens.iter()
        .enumerate()
        .map(|(i, &l)| {
            if l > w {
                Err(anyhow!("unpad: row {i} wants {l} values, width is {w}"))
            } else {
                Ok(flat[i * w..i * w + l].to_vec())
            }
        })
        .collect()
}

/// A per-sequence vector `(rows,)` from a slice.
pub fn vector(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}

/// Places each row's values at its response positions of `batch` (position p+j-1 for the
/// j-th response token, p the prompt length): a `(b, L-1)` tensor on the batch's device,
/// zero elsewhere. Rows may carry fewer values than response tokens (e.g. one value at the
/// first response position).
pub fn at_response(batch: &SeqBatch, rows: &[&[f32]]) -> Result<Tensor> {
    let b = batch.len();
    if rows.len() != b {
        return Err(anyhow!(
            "at_response: {} rows for a batch of {b}",
            rows.len()
        ));
    }
    let w = (batch.input_ids.size()[1] - 1) as usize;
    let mut v = vec![0f32; b * w];
    for (i, r) in rows.iter().enumerate() {
        let start = batch.prompt_lens[i] - 1;
        if r.len() > batch.response_lens[i] {
            return Err(anyhow!(
                "at_response: row {i} has {} values for {} response tokens",
                r.len(),
                batch.response_lens[i]
            ));
        }
        v[i * w + start..i * w + start + r.len()].copy_from_slice(r);
    }
    Ok(Tensor::from_slice(&v)
        .view([b as i64, w as i64])
        .to_device(batch.input_ids.device()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_unpad_and_place() {
        let rows = vec![vec![1.0, 2.0, 3.0], vec![4.0]];
        let (t, m) = pad(&rows);
        assert_eq!(
            Vec::<f32>::try_from(t.view([-1])).unwrap(),
            vec![1., 2., 3., 4., 0., 0.]
        );
        assert_eq!(
            Vec::<f32>::try_from(m.view([-1])).unwrap(),
            vec![1., 1., 1., 1., 0., 0.]
        );
        assert_eq!(unpad(&t, &[3, 1]).unwrap(), rows);
        let batch = SeqBatch::new(
            &[(vec![5, 6], vec![7, 8, 9]), (vec![1, 2, 3], vec![4])],
            0,
            Device::Cpu,
        )
        .unwrap();
        let placed = at_response(&batch, &[&rows[0], &rows[1]]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(placed.view([-1])).unwrap(),
            vec![0., 1., 2., 3., 0., 0., 4., 0.]
        );
        // the values land exactly where the batch's response mask is 1
        assert!(placed
            .ne(0.0)
            .to_kind(Kind::Float)
            .equal(&batch.response_mask));
        let first = at_response(&batch, &[&[9.0], &[8.0]]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(first.view([-1])).unwrap(),
            vec![0., 9., 0., 0., 0., 0., 8., 0.]
        );
        assert!(at_response(&batch, &[&[1.0, 2.0], &[1.0, 2.0]]).is_err());
    }
}
