//! The optimiser and learning-rate flags of the trainers (train-sft, train-rm-lora,
//! ppo-update): one set of names, meanings and checks, flattened into each command line.
//!
//! Three defaults differ by stage, as they do in every RLHF stack (supervised fine-tuning
//! takes larger steps than preference and policy training): `--learning-rate`,
//! `--lr-schedule` and `--final-lr-fraction`. The group leaves them without a default and
//! each stage sets its own with `mut_arg` (see [`OptimArgs`]), so `--help` shows the value
//! that applies.

use crate::optim::AdamWConfig;
use crate::schedule::ScheduleKind;
use rlhf_core::CoreError;

/// AdamW, learning-rate schedule and gradient clipping.
///
/// A stage that flattens this group sets the three stage defaults on its `Cli`:
///
/// ```ignore
/// #[command(mut_arg("learning_rate", |a| a.default_value("1e-4").required(false)))]
/// #[command(mut_arg("lr_schedule", |a| a.default_value("linear").required(false)))]
/// #[command(mut_arg("final_lr_fraction", |a| a.default_value("0").required(false)))]
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Optimiser (AdamW) and learning rate")]
pub struct OptimArgs {
    /// Peak learning rate (reached at the end of warm-up).
    #[arg(long, value_name = "LR")]
    pub learning_rate: f64,
    /// Learning-rate decay after warm-up: constant, linear or cosine. Also accepted as
    /// --schedule.
    #[arg(long, value_name = "KIND", alias = "schedule")]
    pub lr_schedule: ScheduleKind,
    /// Optimiser steps of linear warm-up from 0 to --learning-rate.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: u64,
    /// Final learning rate of a linear or cosine decay, as a fraction of the peak. Also
    /// accepted as --min-lr-fraction.
    #[arg(long, value_name = "F", alias = "min-lr-fraction")]
    pub final_lr_fraction: f64,
    /// AdamW decoupled weight decay, applied to weight matrices (LoRA factors and heads
    /// included), not to norm scales or biases.
    #[arg(long, default_value_t = 0.0, value_name = "WD")]
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this value (0: no clipping).
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    pub max_grad_norm: f64,
    /// AdamW beta1 (first-moment decay).
    #[arg(long, default_value_t = 0.9, value_name = "B1")]
    pub adam_beta1: f64,
    /// AdamW beta2 (second-moment decay).
    #[arg(long, default_value_t = 0.999, value_name = "B2")]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = 1e-8, value_name = "EPS")]
    pub adam_eps: f64,
}

impl OptimArgs {
    /// Checks every value; the error names the flag (a usage error, exit 2).
    pub fn validate(&self) -> Result<(), rlhf_core::CoreError> {
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return Err(CoreError::usage(format!(
                "--learning-rate must be a number >= 0 (0: the weights stay as they are), got {}",
                self.learning_rate
            )));
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return Err(CoreError::usage(format!(
                "--final-lr-fraction must be in [0, 1], got {}",
                self.final_lr_fraction
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(CoreError::usage(format!(
                "--weight-decay must be a number >= 0, got {}",
                self.weight_decay
            )));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(CoreError::usage(format!(
                "--max-grad-norm must be >= 0 (0: no clipping), got {}",
                self.max_grad_norm
            )));
        }
        for (flag, v) in [
            ("--adam-beta1", self.adam_beta1),
            ("--adam-beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(CoreError::usage(format!(
                    "{flag} must be in [0, 1), got {v}"
                )));
            }
        }
        if !(self.adam_eps > 0.0 && self.adam_eps.is_finite()) {
            return Err(CoreError::usage(format!(
                "--adam-eps must be a number > 0, got {}",
                self.adam_eps
            )));
        }
        Ok(())
    }

    /// The AdamW settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.learning_rate,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A stage's command line as the trainers declare it.
    #[derive(Debug, Parser)]
    #[command(name = "stage")]
    #[command(mut_arg("learning_rate", |a| a.default_value("3e-4").required(false)))]
    #[command(mut_arg("lr_schedule", |a| a.default_value("cosine").required(false)))]
    #[command(mut_arg("final_lr_fraction", |a| a.default_value("0.1").required(false)))]
    struct Stage {
        #[command(flatten)]
        optim: OptimArgs,
    }

    fn parse(args: &[&str]) -> Result<OptimArgs, clap::Error> {
        Stage::try_parse_from(std::iter::once("stage").chain(args.iter().copied())).map(|s| s.optim)
    }

    #[test]
    fn the_stage_sets_its_own_defaults_and_help_shows_them() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.learning_rate, 3e-4);
        assert_eq!(o.lr_schedule, ScheduleKind::Cosine);
        assert_eq!(o.final_lr_fraction, 0.1);
        assert_eq!(
            (o.weight_decay, o.max_grad_norm, o.warmup_steps),
            (0.0, 1.0, 0)
        );
        assert_eq!(o.adamw().beta2, 0.999);
        o.validate().unwrap();
        let help = Stage::command().render_long_help().to_string();
        assert!(
            help.contains("Optimiser (AdamW) and learning rate"),
            "{help}"
        );
        assert!(help.contains("[default: cosine]"), "{help}");
        assert!(help.contains("[default: 3e-4]"), "{help}");
    }

    #[test]
    fn the_old_names_still_parse() {
        let o = parse(&["--schedule", "linear", "--min-lr-fraction", "0.5"]).unwrap();
        assert_eq!(o.lr_schedule, ScheduleKind::Linear);
        assert_eq!(o.final_lr_fraction, 0.5);
        assert_eq!(
            o,
            parse(&["--lr-schedule", "linear", "--final-lr-fraction", "0.5"]).unwrap()
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--learning-rate=-1e-4"][..], "--learning-rate"),
            (&["--final-lr-fraction", "2"][..], "--final-lr-fraction"),
            (&["--weight-decay=-1"][..], "--weight-decay"),
            (&["--max-grad-norm", "NaN"][..], "--max-grad-norm"),
            (&["--adam-beta1", "1"][..], "--adam-beta1"),
            (&["--adam-eps", "0"][..], "--adam-eps"),
        ] {
            let err = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        assert!(parse(&["--lr-schedule", "step"]).is_err());
    }
}
