//! Timing helper shared by cases: warm-up calls, then trials of enough calls to fill a
//! minimum duration each; the figure is the median time per call over the trials (robust
//! to a noisy neighbour process on a shared machine).
//! `scripts/bench/common.py` implements the same procedure for Python references.

use std::time::Instant;

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Untimed calls first (allocator, thread pool and cache warm-up).
    pub warmup: usize,
    /// Timed trials; the median is reported.
    pub trials: usize,
    /// Minimum seconds per trial (calls per trial are chosen to reach it).
    pub min_trial_seconds: f64,
}

impl Budget {
    /// The default budget, or a short one for `--quick`.
    pub fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                warmup: 1,
                trials: 3,
                min_trial_seconds: 0.05,
            }
        } else {
            Budget {
                warmup: 3,
                trials: 7,
                min_trial_seconds: 0.5,
            }
        }
    }
}

/// Seconds per call of `f` under `budget`: the fastest trial and the median trial.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub best: f64,
    pub median: f64,
}

/// Times `f` under `budget`.
pub fn seconds_per_call(budget: Budget, mut f: impl FnMut()) -> Timing {
    for _ in 0..budget.warmup {
        f();
    }
    let start = Instant::now();
    f();
    let one = start.elapsed().as_secs_f64().max(1e-9);
    let calls = ((budget.min_trial_seconds / one).ceil() as usize).max(1);
    let mut per_call: Vec<f64> = (0..budget.trials.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    Timing {
        best: per_call.iter().copied().fold(f64::INFINITY, f64::min),
        median: median(&mut per_call),
    }
}

/// The median (mean of the middle two for an even count); NaN for an empty slice.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn timing_counts_calls() {
        let mut calls = 0usize;
        let b = Budget {
            warmup: 2,
            trials: 3,
            min_trial_seconds: 0.0,
        };
        let s = seconds_per_call(b, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        });
        // 2 warm-up + 1 calibration + 3 trials of 1 call.
        assert_eq!(calls, 6);
        assert!((0.0015..0.5).contains(&s.best), "{s:?}");
        assert!(s.best <= s.median);
    }
}
