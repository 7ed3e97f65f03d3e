//! KL coefficient control: a fixed beta, or the adaptive proportional controller of
//! Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", sec. 2.2):
//!
//! ```text
//! e = clip(KL / target - 1, -0.2, 0.2)
//! beta <- max(floor, beta * (1 + e * n_steps / horizon))
//! ```
//!
//! The floor (default 0, Ziegler's controller) makes the target a budget: beta rises while
//! KL is over the target and, under it, falls back no lower than the floor, so a policy
//! far under its budget is not pushed away from the reference by a vanishing penalty.
//!
//! The state is serialisable so that it persists across iterations (ppo-update writes it
//! beside the adapter and reads it back on the next iteration).

use crate::error::{AlgoError, Result};

/// A KL coefficient controller and its state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KlController {
    /// beta never changes.
    Fixed { value: f64 },
    /// beta follows the observed KL towards `target` (nats per sequence).
    Adaptive {
        value: f64,
        target: f64,
        horizon: f64,
        /// beta never falls below this (0: no floor).
        #[serde(default, skip_serializing_if = "is_zero")]
        floor: f64,
    },
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl KlController {
    /// A fixed coefficient.
    pub fn fixed(value: f64) -> Result<KlController> {
        if !(value >= 0.0 && value.is_finite()) {
            return Err(AlgoError::Invalid(format!(
                "KL coefficient must be a finite number >= 0, got {value}"
            )));
        }
        Ok(KlController::Fixed { value })
    }

    /// An adaptive controller starting at `init`.
    pub fn adaptive(init: f64, target: f64, horizon: f64) -> Result<KlController> {
        KlController::fixed(init)?;
        if !(target > 0.0 && target.is_finite() && horizon > 0.0 && horizon.is_finite()) {
            return Err(AlgoError::Invalid(format!(
                "adaptive KL needs target > 0 and horizon > 0, got target {target}, horizon {horizon}"
            )));
        }
        Ok(KlController::Adaptive {
            value: init,
            target,
            horizon,
            floor: 0.0,
        })
    }

    /// An adaptive controller whose beta never falls below `floor` (starting at the larger
    /// of `init` and `floor`); a fixed controller is returned unchanged when `floor` is 0.
    pub fn with_floor(self, floor: f64) -> Result<KlController> {
        if !(floor >= 0.0 && floor.is_finite()) {
            return Err(AlgoError::Invalid(format!(
                "KL coefficient floor must be a finite number >= 0, got {floor}"
            )));
        }
        match self {
            KlController::Adaptive {
                value,
                target,
                horizon,
                ..
            } => Ok(KlController::Adaptive {
                value: value.max(floor),
                target,
                horizon,
                floor,
            }),
            fixed if floor == 0.0 => Ok(fixed),
            KlController::Fixed { .. } => Err(AlgoError::Invalid(
                "a KL coefficient floor needs the adaptive controller (a target KL)".into(),
            )),
        }
    }

    /// The current coefficient beta.
    pub fn value(&self) -> f64 {
        match self {
            KlController::Fixed { value } | KlController::Adaptive { value, .. } => *value,
        }
    }

    /// The adaptive controller's target KL (nats per sequence); None when fixed.
    pub fn target(&self) -> Option<f64> {
        match self {
            KlController::Fixed { .. } => None,
            KlController::Adaptive { target, .. } => Some(*target),
        }
    }

    /// Updates beta from the KL observed over `n_steps` samples (a no-op when fixed);
    /// returns the new value.
    pub fn update(&mut self, current_kl: f64, n_steps: u64) -> f64 {
        if let KlController::Adaptive {
            value,
            target,
            horizon,
            floor,
        } = self
        {
            if current_kl.is_finite() {
                let error = (current_kl / *target - 1.0).clamp(-0.2, 0.2);
                *value = (*value * (1.0 + error * n_steps as f64 / *horizon)).max(*floor);
            }
        }
        self.value()
    }

    /// True when both controllers are the same kind with the same settings (the value may
    /// differ: it is the state).
    pub fn same_settings(&self, other: &KlController) -> bool {
        match (self, other) {
            (KlController::Fixed { .. }, KlController::Fixed { .. }) => true,
            (
                KlController::Adaptive {
                    target: t1,
                    horizon: h1,
                    floor: f1,
                    ..
                },
                KlController::Adaptive {
                    target: t2,
                    horizon: h2,
                    floor: f2,
                    ..
                },
            ) => t1 == t2 && h1 == h2 && f1 == f2,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_follows_ziegler_update() {
        let mut c = KlController::adaptive(0.1, 6.0, 10000.0).unwrap();
        // KL 9 -> error clipped to 0.2; 256 samples: 0.1 * (1 + 0.2 * 0.0256) = 0.100512
        assert!((c.update(9.0, 256) - 0.100_512).abs() < 1e-12);
        // KL 5.4 -> error -0.1: 0.100512 * (1 - 0.1 * 0.0256) = 0.100254689
        assert!((c.update(5.4, 256) - 0.100_512 * (1.0 - 0.002_56)).abs() < 1e-12);
        // non-finite KL leaves it alone
        let before = c.value();
        assert_eq!(c.update(f64::NAN, 256), before);
    }

    #[test]
    fn fixed_never_moves_and_state_round_trips() {
        let mut c = KlController::fixed(0.05).unwrap();
        assert_eq!(c.update(100.0, 1000), 0.05);
        let a = KlController::adaptive(0.2, 3.0, 500.0).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"adaptive","value":0.2,"target":3.0,"horizon":500.0}"#
        );
        let back: KlController = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert!(a.same_settings(&KlController::adaptive(0.9, 3.0, 500.0).unwrap()));
        assert!(!a.same_settings(&c));
        assert!(KlController::fixed(-1.0).is_err());
        assert!(KlController::adaptive(0.1, 0.0, 10.0).is_err());
    }

    #[test]
    fn floor_holds_beta_under_the_budget_and_lets_it_rise_over_it() {
        let mut c = KlController::adaptive(0.05, 4.0, 256.0)
            .unwrap()
            .with_floor(0.1)
            .unwrap();
        assert_eq!(c.value(), 0.1, "starts at the floor when init is below it");
        // KL 1 (under the target): 0.1 * (1 - 0.2 * 2) = 0.06 -> held at the floor
        assert_eq!(c.update(1.0, 512), 0.1);
        // KL 8 (over): 0.1 * (1 + 0.2 * 2) = 0.14
        assert!((c.update(8.0, 512) - 0.14).abs() < 1e-12);
        // under again: 0.14 * 0.6 = 0.084 -> 0.1
        assert_eq!(c.update(0.0, 512), 0.1);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""floor":0.1"#), "{json}");
        assert_eq!(serde_json::from_str::<KlController>(&json).unwrap(), c);
        assert!(!c.same_settings(&KlController::adaptive(0.1, 4.0, 256.0).unwrap()));
        assert!(KlController::fixed(0.1).unwrap().with_floor(0.1).is_err());
        assert!(KlController::fixed(0.1).unwrap().with_floor(0.0).is_ok());
        assert!(KlController::adaptive(0.1, 4.0, 1.0)
            .unwrap()
            .with_floor(-1.0)
            .is_err());
    }
}
