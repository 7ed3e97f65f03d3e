//! Reward statistics: mean, standard deviation, quantiles and the correlation of reward
//! with response length (a quick check for length hacking), for `reward` and each source.

use serde::Serialize;

/// Summary statistics of one column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnStats {
    pub count: usize,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    pub p05: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub max: f64,
    /// Pearson correlation with the response length in tokens (null when either is constant).
    pub corr_length: Option<f64>,
}

/// The q-quantile (0..=1) of sorted values, linearly interpolated (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Pearson correlation; None when fewer than two points or a side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Statistics of `values` (nulls skipped) against `lengths` (same rows).
pub fn column_stats(values: &[Option<f32>], lengths: &[usize]) -> Option<ColumnStats> {
    let pairs: Vec<(f64, f64)> = values
        .iter()
        .zip(lengths)
        .filter_map(|(v, &l)| v.map(|v| (v as f64, l as f64)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let vals: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let lens: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let mean = vals.iter().sum::<f64>() / n;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let mut sorted = vals.clone();
    sorted.sort_by(f64::total_cmp);
    Some(ColumnStats {
        count: pairs.len(),
        mean,
        std: var.sqrt(),
        min: sorted[0],
        p05: quantile(&sorted, 0.05),
        p25: quantile(&sorted, 0.25),
        p50: quantile(&sorted, 0.5),
        p75: quantile(&sorted, 0.75),
        p95: quantile(&sorted, 0.95),
        max: sorted[sorted.len() - 1],
        corr_length: pearson(&vals, &lens),
    })
}

impl ColumnStats {
    /// One human line for stderr.
    pub fn line(&self, name: &str) -> String {
        let corr = self
            .corr_length
            .map(|c| format!("{c:+.3}"))
            .unwrap_or_else(|| "n/a".into());
        format!(
            "{name:>10}: mean {:+.4} std {:.4} | min {:+.3} p05 {:+.3} p25 {:+.3} p50 {:+.3} p75 {:+.3} p95 {:+.3} max {:+.3} | corr(length) {corr}",
            self.mean, self.std, self.min, self.p05, self.p25, self.p50, self.p75, self.p95, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 4.0);
        assert_eq!(quantile(&s, 0.5), 2.5);
        assert!((quantile(&s, 0.25) - 1.75).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.3), 7.0);
    }

    #[test]
    fn pearson_detects_length_dependence() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[8.0, 6.0, 4.0, 2.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&x, &[1.0, 1.0, 1.0, 1.0]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }

    #[test]
    fn stats_skip_nulls() {
        let vals = [Some(1.0), None, Some(3.0), Some(5.0), Some(7.0)];
        let lens = [1, 100, 2, 3, 4];
        let s = column_stats(&vals, &lens).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, 4.0);
        assert!((s.std - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.p50, s.max), (1.0, 4.0, 7.0));
        assert!((s.corr_length.unwrap() - 1.0).abs() < 1e-12);
        assert!(column_stats(&[None], &[1]).is_none());
        assert!(s.line("reward").contains("mean +4.0000"));
    }
}
