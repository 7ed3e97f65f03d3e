//! Learning-rate schedules: linear warm-up, then constant, linear or cosine decay to a
//! floor. Steps are counted in optimiser steps across the whole run (for ppo-update,
//! across iterations: the step count is carried in the optimiser state).

use std::fmt;
use std::str::FromStr;

use crate::error::{AlgoError, Result};

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// Linear from the base rate to `base * final_fraction` at `total_steps`.
    Linear,
    /// Half a cosine from the base rate to `base * final_fraction` at `total_steps`.
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!(
                "unknown schedule `{other}`; expected constant, linear or cosine"
            )),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak learning rate (reached at the end of warm-up).
    pub base_lr: f64,
    /// Steps of linear warm-up from base/warmup to base.
    pub warmup_steps: u64,
    /// Step at which the decay ends (ignored by Constant); later steps stay at the floor.
    pub total_steps: u64,
    /// Floor as a fraction of the base rate (0 decays to zero).
    pub final_fraction: f64,
}

impl Schedule {
    /// A constant rate with no warm-up.
    pub fn constant(lr: f64) -> Schedule {
        Schedule {
            kind: ScheduleKind::Constant,
            base_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
            final_fraction: 1.0,
        }
    }

    /// Checks the ranges (lr >= 0, final fraction in [0, 1], a decay needs total steps
    /// beyond the warm-up).
    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr >= 0.0 && self.base_lr.is_finite()) {
            return Err(AlgoError::Invalid(format!(
                "learning rate must be a finite number >= 0, got {}",
                self.base_lr
            )));
        }
        if !(0.0..=1.0).contains(&self.final_fraction) {
            return Err(AlgoError::Invalid(format!(
                "final learning-rate fraction must be in [0, 1], got {}",
                self.final_fraction
            )));
        }
        if self.kind != ScheduleKind::Constant && self.total_steps <= self.warmup_steps {
            return Err(AlgoError::Invalid(format!(
                "a {} schedule needs total steps ({}) greater than warm-up steps ({})",
                self.kind, self.total_steps, self.warmup_steps
            )));
        }
        Ok(())
    }

    /// The learning rate for the optimiser step with 0-based index `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = self.final_fraction;
        let progress = if self.total_steps > self.warmup_steps {
            ((step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64)
                .min(1.0)
        } else {
            1.0
        };
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => floor + (1.0 - floor) * (1.0 - progress),
            ScheduleKind::Cosine => {
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, final_fraction: f64) -> Schedule {
        Schedule {
            kind,
            base_lr: 1e-3,
            warmup_steps: 4,
            total_steps: 14,
            final_fraction,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_from_one_step() {
        let s = sched(ScheduleKind::Constant, 0.0);
        assert!(close(s.lr_at(0), 2.5e-4));
        assert!(close(s.lr_at(1), 5e-4));
        assert!(close(s.lr_at(3), 1e-3));
        assert!(close(s.lr_at(4), 1e-3));
        assert!(close(s.lr_at(1000), 1e-3));
    }

    #[test]
    fn linear_decay_values() {
        let s = sched(ScheduleKind::Linear, 0.0);
        assert!(close(s.lr_at(4), 1e-3));
        assert!(close(s.lr_at(9), 5e-4));
        assert!(close(s.lr_at(14), 0.0));
        assert!(close(s.lr_at(20), 0.0));
        let s = sched(ScheduleKind::Linear, 0.1);
        // halfway: 0.1 + 0.9 * 0.5 = 0.55
        assert!(close(s.lr_at(9), 5.5e-4));
        assert!(close(s.lr_at(14), 1e-4));
    }

    #[test]
    fn cosine_decay_values() {
        let s = sched(ScheduleKind::Cosine, 0.0);
        assert!(close(s.lr_at(4), 1e-3));
        assert!(close(s.lr_at(9), 5e-4));
        // a quarter of the way: 0.5 (1 + cos(pi/4)) = 0.853553390593
        let s = Schedule {
            total_steps: 12,
            ..s
        };
        assert!(close(s.lr_at(6), 8.535_533_905_932_737e-4));
        assert!(close(s.lr_at(12), 0.0));
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!("Cosine".parse::<ScheduleKind>(), Ok(ScheduleKind::Cosine));
        assert!("step"
            .parse::<ScheduleKind>()
            .unwrap_err()
            .contains("constant"));
        let bad = Schedule {
            total_steps: 4,
            ..sched(ScheduleKind::Linear, 0.0)
        };
        assert!(bad.validate().is_err());
        assert!(sched(ScheduleKind::Linear, 0.0).validate().is_ok());
        assert!(Schedule::constant(1e-4).validate().is_ok());
    }
}
