//! Masked statistics over padded `(batch, tokens)` tensors: sums, means, variances and
//! whitening restricted to the positions a mask marks (response tokens). Padding never
//! contributes, whatever values it holds.

use tch::{Kind, Tensor};

use crate::error::{AlgoError, Result};

/// Checks that two tensors have the same shape, naming them.
pub fn check_same_shape(a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    if a.size() == b.size() {
        Ok(())
    } else {
        Err(AlgoError::mismatch(
            format!("shape of `{b_name}` (must match `{a_name}`)"),
            format!("{:?}", a.size()),
            format!("{:?}", b.size()),
        ))
    }
}

/// Sum of `x` over the masked positions (a scalar tensor).
pub fn masked_sum(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask.to_kind(x.kind())).sum(x.kind())
}

/// Mean of `x` over the masked positions (a scalar; 0 when the mask is empty).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind());
    (x * &m).sum(x.kind()) / m.sum(x.kind()).clamp_min(1.0)
}

/// Per-row sum over the last dimension: `(batch, tokens) -> (batch,)`.
pub fn masked_row_sum(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask.to_kind(x.kind())).sum_dim_intlist([-1i64].as_slice(), false, x.kind())
}

/// Per-row mean over the last dimension: `(batch, tokens) -> (batch,)` (0 for empty rows).
pub fn masked_row_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind());
    masked_row_sum(x, &m)
        / m.sum_dim_intlist([-1i64].as_slice(), false, x.kind())
            .clamp_min(1.0)
}

/// Variance of `x` over the masked positions; `unbiased` applies Bessel's correction
/// n / (n - 1) (as TRL's `masked_var`). Fewer than two positions give 0.
pub fn masked_var(x: &Tensor, mask: &Tensor, unbiased: bool) -> Tensor {
    let m = mask.to_kind(x.kind());
    let n = m.sum(x.kind());
    let mean = masked_mean(x, &m);
    let centred = x - &mean;
    let var = masked_mean(&(&centred * &centred), &m);
    if unbiased {
        let n_val = n.double_value(&[]);
        if n_val < 2.0 {
            return var.zeros_like();
        }
        var * (n_val / (n_val - 1.0))
    } else {
        var
    }
}

/// Whitens `x` over the masked positions: (x - mean) / sqrt(var + 1e-8) with the unbiased
/// variance; `shift_mean = false` adds the mean back (scales only, as for rewards).
/// Masked-out positions are set to 0.
pub fn masked_whiten(x: &Tensor, mask: &Tensor, shift_mean: bool) -> Tensor {
    let m = mask.to_kind(x.kind());
    let mean = masked_mean(x, &m);
    let var = masked_var(x, &m, true);
    let mut out = (x - &mean) * (var + 1e-8).rsqrt();
    if !shift_mean {
        out += &mean;
    }
    out * m
}

/// Scalar value of a 0-d tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// The index of the last masked position in each row: `(batch, tokens) -> (batch,)` i64,
/// or an error naming the first row whose mask is empty.
pub fn last_positions(mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_kind(Kind::Int64);
    let rows = m.sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64);
    let empty = rows.eq(0).nonzero();
    if empty.size()[0] > 0 {
        let row = empty.int64_value(&[0, 0]);
        return Err(AlgoError::Invalid(format!(
            "row {row} has no response token (empty mask); every rollout needs at least one response token"
        )));
    }
    let t = m.size()[m.dim() - 1];
    let pos = Tensor::arange(t, (Kind::Int64, m.device())).unsqueeze(0);
    Ok((m * pos).argmax(-1, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let n = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([-1, n])
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn masked_stats_ignore_padding() {
        let x = t2(&[&[1.0, 2.0, 100.0], &[3.0, -50.0, 6.0]]);
        let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 1.0]]);
        // values 1, 2, 3, 6: mean 3, population var (4 + 1 + 0 + 9)/4 = 3.5, unbiased 14/3
        assert!((scalar(&masked_mean(&x, &m)) - 3.0).abs() < 1e-6);
        assert!((scalar(&masked_var(&x, &m, false)) - 3.5).abs() < 1e-6);
        assert!((scalar(&masked_var(&x, &m, true)) - 14.0 / 3.0).abs() < 1e-5);
        assert_eq!(vals(&masked_row_sum(&x, &m)), vec![3.0, 9.0]);
        assert_eq!(vals(&masked_row_mean(&x, &m)), vec![1.5, 4.5]);
        assert!((scalar(&masked_sum(&x, &m)) - 12.0).abs() < 1e-6);
    }

    #[test]
    fn whiten_hand_values() {
        let x = t2(&[&[1.0, 2.0, 100.0], &[3.0, -50.0, 6.0]]);
        let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 1.0]]);
        let w = vals(&masked_whiten(&x, &m, true));
        let sd = (14.0f64 / 3.0).sqrt(); // 2.160246899
        let expect = [-2.0 / sd, -1.0 / sd, 0.0, 0.0, 0.0, 3.0 / sd];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{w:?}");
        }
        // mean kept: (x - 3)/sd + 3 on masked positions
        let w = vals(&masked_whiten(&x, &m, false));
        assert!(
            (w[0] - (3.0 - 2.0 / sd)).abs() < 1e-5 && w[2] == 0.0,
            "{w:?}"
        );
    }

    #[test]
    fn last_positions_and_empty_rows() {
        let m = t2(&[
            &[0.0, 1.0, 1.0, 0.0],
            &[1.0, 1.0, 1.0, 1.0],
            &[0.0, 0.0, 1.0, 0.0],
        ]);
        assert_eq!(vals(&last_positions(&m).unwrap()), vec![2.0, 3.0, 2.0]);
        let m = t2(&[&[0.0, 1.0], &[0.0, 0.0]]);
        let e = last_positions(&m).unwrap_err().to_string();
        assert!(e.contains("row 1 has no response token"), "{e}");
    }
}
