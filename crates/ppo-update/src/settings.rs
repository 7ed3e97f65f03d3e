//! Validated settings: every flag checked in one place (ranges, paths, combinations) before
//! the model is loaded, so a bad command line fails in milliseconds with a clear message.

use std::path::PathBuf;

use anyhow::{bail, Result};
use rlhf_algo::kl::KlEstimator;
use rlhf_algo::kl_control::KlController;
use rlhf_algo::optim::AdamWConfig;
use rlhf_algo::schedule::Schedule;
use rlhf_core::CoreError;
use tch::{Device, Kind};

use crate::args::{Algo, Cli, KlControlOn};

/// Everything ppo-update needs, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// The frozen base (LoRA), or the current policy's weights (--full).
    pub model_dir: PathBuf,
    /// Full fine-tuning of the policy (--full). Absent from LoRA fingerprints.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// The reference policy's model folder (--full only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_model: Option<PathBuf>,
    #[serde(skip)]
    pub device: Device,
    #[serde(skip)]
    pub kind: Kind,
    pub adapter: Option<PathBuf>,
    pub rollouts: PathBuf,
    pub scores: PathBuf,
    pub out: PathBuf,
    pub iteration: Option<i32>,
    pub algo: Algo,
    pub reward_column: String,
    /// Fresh-adapter LoRA (used when no --adapter is given, and for a new critic).
    pub lora: rlhf_nn::LoraChoice,
    pub critic: Option<PathBuf>,
    pub critic_init: Option<PathBuf>,
    pub adamw: AdamWConfig,
    pub critic_lr: f64,
    pub schedule: Schedule,
    pub max_grad_norm: f64,
    pub reset_optimizer: bool,
    pub epochs: usize,
    pub minibatch_size: usize,
    pub micro_batch_size: usize,
    /// --minibatch-by-prompt (absent from fingerprints without it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub minibatch_by_prompt: bool,
    pub clip_range: f64,
    pub value_clip_range: f64,
    pub gamma: f64,
    pub gae_lambda: f64,
    pub whiten_advantages: bool,
    pub whiten_rewards: bool,
    pub entropy_coef: f64,
    pub grpo_eps: f64,
    /// The controller as configured by the flags (its state may come from --adapter).
    pub kl: KlController,
    pub kl_control_on: KlControlOn,
    pub kl_estimator: KlEstimator,
    pub recompute_ref: bool,
    pub recompute_old_logprobs: bool,
    pub tis_cap: f64,
    /// --kl-max (absent from fingerprints without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_max: Option<f64>,
    /// The shared checkpoint flags (not part of the fingerprint).
    #[serde(skip)]
    pub checkpoint: rlhf_algo::checkpoint::CheckpointArgs,
    #[serde(skip)]
    pub record_timings: bool,
    pub seed: u64,
}

fn check_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v >= lo && v <= hi) {
        anyhow::bail!(CoreError::usage(format!(
            "{name} must be in [{lo}, {hi}], got {v}"
        )));
    }
    Ok(())
}

impl Settings {
    /// Validates the parsed command line.
    pub fn from_cli(cli: &Cli) -> Result<Settings> {
        let mut inputs = vec![
            ("--model", cli.model.model.as_path()),
            ("--rollouts", cli.rollouts.as_path()),
            ("--scores", cli.scores.as_path()),
        ];
        if let Some(a) = &cli.adapter {
            inputs.push(("--adapter", a.as_path()));
        }
        if let Some(r) = &cli.ref_model {
            inputs.push(("--ref-model", r.as_path()));
        }
        for (flag, dir) in [
            ("--critic", &cli.critic),
            ("--critic-init", &cli.critic_init),
        ] {
            if let Some(d) = dir {
                inputs.push((flag, d.as_path()));
            }
        }
        rlhf_core::paths::check_outputs(&[("--out", &cli.out)], &inputs)?;
        cli.train.checkpoint.validate()?;
        let device = cli.model.device()?;
        let model_hint = if cli.full {
            "--model takes the current policy with --full (the SFT model folder, or the previous `ppo-update --full` output)"
        } else {
            "--model takes the frozen base (e.g. the SFT model folder); the policy adapter goes to --adapter"
        };
        if !cli.model.model.join("config.json").is_file() {
            bail!(CoreError::BadInput {
                path: cli.model.model.clone(),
                row: None,
                message: format!("not a model folder (no config.json)\n  hint: {model_hint}"),
            });
        }
        if let Some(r) = &cli.ref_model {
            if !r.join("config.json").is_file() {
                bail!(CoreError::BadInput {
                    path: r.clone(),
                    row: None,
                    message: "--ref-model: not a model folder (no config.json)\n  hint: pass the SFT model folder the policy started from".into(),
                });
            }
        }
        if cli.full && cli.ref_model.is_none() {
            // clap enforces this for the binary; kept for callers building a Cli by hand
            anyhow::bail!(CoreError::usage(
                "--full needs --ref-model (the frozen reference policy)",
            ));
        }
        if cli.full && cli.model.model == cli.out {
            anyhow::bail!(CoreError::usage("--out must differ from --model (the input policy is read while the output is written)"));
        }
        for (flag, dir) in [
            ("--adapter", &cli.adapter),
            ("--critic", &cli.critic),
            ("--critic-init", &cli.critic_init),
        ] {
            if let Some(d) = dir {
                if !d.join("adapter_config.json").is_file() {
                    bail!(CoreError::BadInput {
                        path: d.clone(),
                        row: None,
                        message: format!("{flag}: not an adapter folder (no adapter_config.json)"),
                    });
                }
            }
        }
        if cli.adapter.as_deref() == Some(cli.out.as_path()) {
            anyhow::bail!(CoreError::usage("--out must differ from --adapter (the input adapter is read while the output is written)"));
        }
        if cli.epochs == 0 || cli.minibatch_size == 0 || cli.micro_batch_size == 0 {
            anyhow::bail!(CoreError::usage(
                "--epochs, --minibatch-size and --micro-batch-size must be at least 1",
            ));
        }
        if !cli.minibatch_size.is_multiple_of(cli.micro_batch_size) {
            anyhow::bail!(CoreError::usage(format!(
                "--minibatch-size ({}) must be a multiple of --micro-batch-size ({})",
                cli.minibatch_size, cli.micro_batch_size
            )));
        }
        check_range("--clip-range", cli.clip_range, 0.0, 10.0)?;
        check_range("--value-clip-range", cli.value_clip_range, 0.0, f64::MAX)?;
        check_range("--gamma", cli.gamma, 0.0, 1.0)?;
        check_range("--gae-lambda", cli.gae_lambda, 0.0, 1.0)?;
        check_range("--entropy-coef", cli.entropy_coef, 0.0, f64::MAX)?;
        check_range("--grpo-eps", cli.grpo_eps, 0.0, f64::MAX)?;
        check_range("--tis-cap", cli.tis_cap, 0.0, f64::MAX)?;
        if let Some(m) = cli.kl_max {
            if !(m > 0.0 && m.is_finite()) {
                anyhow::bail!(CoreError::usage(format!(
                    "--kl-max must be a positive number of nats per response, got {m}"
                )));
            }
        }
        if cli.algo == Algo::Reinforce {
            check_range(
                "--kl-coef (reinforce weights score by 1 - beta)",
                cli.kl_coef,
                0.0,
                1.0,
            )?;
        }
        let o = &cli.train.optim;
        o.validate()?;
        let adamw = o.adamw();
        let critic_lr = cli.critic_learning_rate.unwrap_or(o.learning_rate);
        check_range("--critic-learning-rate", critic_lr, 0.0, f64::MAX)?;
        let schedule = Schedule {
            kind: o.lr_schedule,
            base_lr: o.learning_rate,
            warmup_steps: o.warmup_steps,
            total_steps: cli.total_steps,
            final_fraction: o.final_lr_fraction,
        };
        schedule.validate().map_err(|e| {
            CoreError::usage(format!(
                "{e} (--lr-schedule, --warmup-steps, --total-steps)"
            ))
        })?;
        let kl = match cli.kl_target {
            Some(t) => KlController::adaptive(cli.kl_coef, t, cli.kl_horizon)
                .and_then(|c| c.with_floor(cli.kl_coef_min)),
            None => KlController::fixed(cli.kl_coef).and_then(|c| c.with_floor(cli.kl_coef_min)),
        }
        .map_err(|e| {
            CoreError::usage(format!(
                "{e} (--kl-coef, --kl-target, --kl-horizon, --kl-coef-min)"
            ))
        })?;
        if cli.kl_control_on == KlControlOn::Updated && cli.kl_target.is_none() {
            anyhow::bail!(CoreError::usage(
                "--kl-control-on updated steers the adaptive controller: it needs --kl-target"
            ));
        }
        let lora = cli.train.lora.resolve()?;
        if cli.full && cli.train.lora.given() && !cli.algo.has_critic() {
            anyhow::bail!(CoreError::usage(format!(
                "--full --algo {} trains no LoRA adapter (the policy is fully tuned, and there is no critic); drop the --lora-* flags",
                cli.algo.name()
            )));
        }
        if !cli.algo.has_critic() && (cli.critic.is_some() || cli.critic_init.is_some()) {
            anyhow::bail!(CoreError::usage(format!(
                "--algo {} trains no critic; drop --critic/--critic-init",
                cli.algo.name()
            )));
        }
        if cli.reward_column.is_empty() {
            anyhow::bail!(CoreError::usage("--reward-column must not be empty"));
        }
        let whiten_advantages = cli
            .whiten_advantages
            .unwrap_or(matches!(cli.algo, Algo::Ppo | Algo::Reinforce));
        Ok(Settings {
            model_dir: cli.model.model.clone(),
            full: cli.full,
            ref_model: cli.ref_model.clone(),
            device,
            kind: cli.model.kind(),
            adapter: cli.adapter.clone(),
            rollouts: cli.rollouts.clone(),
            scores: cli.scores.clone(),
            out: cli.out.clone(),
            iteration: cli.iteration,
            algo: cli.algo,
            reward_column: cli.reward_column.clone(),
            lora,
            critic: cli.critic.clone(),
            critic_init: cli.critic_init.clone(),
            adamw,
            critic_lr,
            schedule,
            max_grad_norm: o.max_grad_norm,
            reset_optimizer: cli.reset_optimizer,
            epochs: cli.epochs,
            minibatch_size: cli.minibatch_size,
            micro_batch_size: cli.micro_batch_size,
            minibatch_by_prompt: cli.minibatch_by_prompt,
            clip_range: cli.clip_range,
            value_clip_range: cli.value_clip_range,
            gamma: cli.gamma,
            gae_lambda: cli.gae_lambda,
            whiten_advantages,
            whiten_rewards: cli.whiten_rewards,
            entropy_coef: cli.entropy_coef,
            grpo_eps: cli.grpo_eps,
            kl,
            kl_control_on: cli.kl_control_on,
            kl_estimator: cli.kl_estimator,
            recompute_ref: cli.recompute_ref,
            recompute_old_logprobs: cli.recompute_old_logprobs,
            tis_cap: cli.tis_cap,
            kl_max: cli.kl_max,
            checkpoint: cli.train.checkpoint.clone(),
            record_timings: cli.record_timings,
            seed: cli.global.seed,
        })
    }

    /// The folder holding the previous iteration's training state (optimiser moments,
    /// critic, training_state.json): --adapter, or with --full the policy folder --model.
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        if self.full {
            Some(&self.model_dir)
        } else {
            self.adapter.as_deref()
        }
    }

    /// The checkpoint folder of an interrupted run: `OUT.checkpoint` beside --out.
    pub fn checkpoint_dir(&self) -> PathBuf {
        rlhf_algo::step_loop::checkpoint_dir_for(&self.out)
    }

    /// What must be identical for a checkpoint to be resumed: every setting that affects
    /// the result (not the checkpoint flags or --record-timings), as a JSON object.
    pub fn fingerprint(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v.as_object_mut()
            .map(|o| o.insert("dtype".into(), format!("{:?}", self.kind).into()));
        v
    }
}
