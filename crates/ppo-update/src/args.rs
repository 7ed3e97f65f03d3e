//! The command line of ppo-update: every flag with its default and unit; turned into
//! validated [`crate::settings::Settings`] before any heavy work.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use rlhf_algo::kl::KlEstimator;
use rlhf_algo::trainer_args::TrainerArgs;
use rlhf_core::cli::GlobalArgs;
use rlhf_nn::ModelArgs;

/// Which KL the adaptive controller reads (--kl-control-on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlControlOn {
    /// The rollouts' KL under the policy that sampled them.
    Rollouts,
    /// The updated policy's KL on the same rollouts.
    Updated,
}

/// The policy-gradient algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// PPO: clipped surrogate, per-token KL penalty in the reward, GAE with a LoRA critic.
    Ppo,
    /// PERL's REINFORCE with a learned value baseline: (1 - beta) * score - beta * KL.
    Reinforce,
    /// REINFORCE leave-one-out: the baseline is the mean reward of the prompt's other samples.
    Rloo,
    /// GRPO: group-normalised advantages, clipped ratio, k3 KL to the reference in the loss.
    Grpo,
}

impl Algo {
    /// The name used in files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Ppo => "ppo",
            Algo::Reinforce => "reinforce",
            Algo::Rloo => "rloo",
            Algo::Grpo => "grpo",
        }
    }

    /// True when the algorithm trains a critic (value adapter + head).
    pub fn has_critic(self) -> bool {
        matches!(self, Algo::Ppo | Algo::Reinforce)
    }
}

/// One policy iteration: PPO, REINFORCE with baseline (PERL), RLOO or GRPO on rollouts and
/// scores; writes the next policy adapter (or, with --full, the next full model).
#[derive(Debug, Parser)]
#[command(mut_arg("learning_rate", |a| a.default_value("1e-4").required(false)))]
#[command(mut_arg("lr_schedule", |a| a.default_value("constant").required(false)))]
#[command(mut_arg("final_lr_fraction", |a| a.default_value("0").required(false)))]
#[command(
    name = "ppo-update",
    version,
    about,
    long_about = "Reads rollouts and scores, recomputes the policy's log-probabilities, computes \
KL-regularised advantages and updates the LoRA policy (and the LoRA critic for ppo and \
reinforce) on the frozen base. Writes the next adapter folder atomically: the policy in PEFT \
layout, with the critic (critic/), optimiser state, KL-controller state (training_state.json) \
and metrics.parquet inside it. Pass that folder as --adapter to the next iteration.\n\n\
--full tunes every weight of the policy instead (the baseline PERL compares LoRA with): \
--model is then the current policy (first iteration: the SFT model; later: the previous --full \
output), --ref-model the frozen reference loaded as a second copy (it carries the LoRA \
critic), and --out a full model folder (config.json, model.safetensors, tokenizer files) with \
the same state files beside the weights. Pass it as --model to the next iteration, and to \
sample-rollouts (no --adapter; --no-ref-logprobs, since ppo-update --full recomputes them).\n\n\
Exit codes: 0 success, 1 failure, 2 usage, 3 bad input data, 130/143 stopped by SIGINT/SIGTERM (trainers after a checkpoint)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub model: ModelArgs,

    /// Policy adapter folder to continue from (the previous iteration's output). Without it a
    /// fresh LoRA policy is created from --lora-* (it starts equal to the base).
    #[arg(long, value_name = "DIR", conflicts_with = "full")]
    pub adapter: Option<PathBuf>,
    /// Full fine-tuning of the policy instead of LoRA: every weight of --model (the current
    /// policy: the SFT model, then the previous --full output) is trained with AdamW, and
    /// --out is a full model folder with the optimiser, critic and KL state beside the
    /// weights. Needs --ref-model. Costs a second model copy (the reference), a gradient and
    /// two AdamW moments per weight: the memory PERL's LoRA policy avoids. With --dtype bf16
    /// the weights themselves are bf16 (no f32 master copy: small updates round away), so
    /// prefer f32.
    #[arg(long)]
    pub full: bool,
    /// With --full (and only then; required): the reference policy, a full model folder
    /// loaded as a second, frozen copy. Use the same folder (the SFT model) in every
    /// iteration. Reference log-probabilities are always recomputed from it: rollouts
    /// sampled from a full policy record the policy's own log-probabilities as ref_logprobs
    /// (it has no adapter to switch off). The critic (ppo, reinforce) sits on this copy.
    #[arg(
        long,
        value_name = "DIR",
        requires = "full",
        required_if_eq("full", "true")
    )]
    pub ref_model: Option<PathBuf>,
    /// Rollouts (file, folder of part files, or glob) written by sample-rollouts.
    #[arg(long, value_name = "PATH")]
    pub rollouts: PathBuf,
    /// Scores (file, folder or glob) written by score-rewards, one row per rollout.
    #[arg(long, value_name = "PATH")]
    pub scores: PathBuf,
    /// Output folder for the next policy adapter (replaced atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Policy iteration number recorded in metrics (default: the rollouts' iteration).
    #[arg(long, value_name = "N")]
    pub iteration: Option<i32>,

    /// Policy-gradient algorithm.
    #[arg(long, value_enum, default_value_t = Algo::Ppo)]
    pub algo: Algo,
    /// Scores column used as the training reward.
    #[arg(long, default_value = "reward", value_name = "COLUMN")]
    pub reward_column: String,

    /// Critic adapter folder to continue from (default: critic/ inside --adapter, or inside
    /// --model with --full).
    #[arg(long, value_name = "DIR")]
    pub critic: Option<PathBuf>,
    /// Initialise a new critic from this reward adapter folder (LoRA + score head) instead of
    /// a fresh adapter with a zero value head.
    #[arg(long, value_name = "DIR")]
    pub critic_init: Option<PathBuf>,

    /// Learning rate of the critic (default: --learning-rate).
    #[arg(long, value_name = "LR")]
    pub critic_learning_rate: Option<f64>,
    /// Step at which a linear or cosine decay ends (optimiser steps across iterations).
    #[arg(long, default_value_t = 0, value_name = "STEPS")]
    pub total_steps: u64,
    /// Start the optimiser afresh instead of loading the moments saved with --adapter (with
    /// --full: beside the weights in --model).
    #[arg(long)]
    pub reset_optimizer: bool,

    /// Passes over the rollouts.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: usize,
    /// Rollouts per optimiser step.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub minibatch_size: usize,
    /// Rollouts per forward pass; a minibatch is accumulated over minibatch/micro passes.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub micro_batch_size: usize,
    /// Cut minibatches from a shuffle of the prompts rather than of the rollouts: a prompt's K
    /// samples stay in one minibatch (when --minibatch-size is a multiple of K) and each
    /// micro-batch computes their shared prompt once, which makes a step faster; each step
    /// then sees fewer distinct prompts. With one rollout per prompt, or one minibatch holding
    /// every rollout, it changes nothing.
    #[arg(long)]
    pub minibatch_by_prompt: bool,

    /// PPO ratio clip range epsilon.
    #[arg(long, default_value_t = 0.2, value_name = "EPS")]
    pub clip_range: f64,
    /// Critic value clip range (0 = no value clipping).
    #[arg(long, default_value_t = 0.2, value_name = "C")]
    pub value_clip_range: f64,
    /// Discount gamma (PPO's GAE).
    #[arg(long, default_value_t = 1.0, value_name = "G")]
    pub gamma: f64,
    /// GAE lambda.
    #[arg(long, default_value_t = 0.95, value_name = "L")]
    pub gae_lambda: f64,
    /// Whiten advantages over the rollouts (default: true for ppo and reinforce, false for
    /// rloo and grpo).
    #[arg(long, value_name = "BOOL")]
    pub whiten_advantages: Option<bool>,
    /// Scale PPO's per-token rewards to unit variance before GAE.
    #[arg(long)]
    pub whiten_rewards: bool,
    /// Entropy bonus coefficient (subtracted from the loss).
    #[arg(long, default_value_t = 0.0, value_name = "C")]
    pub entropy_coef: f64,
    /// GRPO advantage epsilon: (R - mean) / (std + eps).
    #[arg(long, default_value_t = 1e-4, value_name = "EPS")]
    pub grpo_eps: f64,

    /// KL coefficient beta (the initial value when adaptive).
    #[arg(long, default_value_t = 0.05, value_name = "BETA")]
    pub kl_coef: f64,
    /// Target KL per sequence (nats) of the adaptive controller; absent = fixed beta.
    #[arg(long, value_name = "NATS")]
    pub kl_target: Option<f64>,
    /// Horizon (rollouts) of the adaptive controller: beta changes by at most
    /// 20% x rollouts / N per iteration.
    #[arg(long, default_value_t = 10000.0, value_name = "N")]
    pub kl_horizon: f64,
    /// Floor of the adaptive controller's beta (needs --kl-target): beta rises while the KL
    /// is over the target and falls back no lower than this, making the target a budget.
    /// 0 = Ziegler's controller, which also lowers beta without bound under the target.
    #[arg(long, default_value_t = 0.0, value_name = "BETA")]
    pub kl_coef_min: f64,
    /// What the adaptive controller reads: `rollouts`, the KL of the iteration's rollouts
    /// under the policy that sampled them (Ziegler et al.; one iteration behind the update),
    /// or `updated`, the KL of the updated policy to the reference on the same rollouts (one
    /// more forward pass over them after the update), which sees this update's drift at once.
    #[arg(long, default_value = "rollouts", value_name = "KL")]
    pub kl_control_on: KlControlOn,
    /// A hard KL limit (nats per response) within the update: before each optimiser step the
    /// policy's KL to the reference is estimated on the step's minibatch (importance-weighted
    /// from the rollouts' sampling policy to the current one, self-normalised), and the step
    /// is skipped while the estimate is over this (metrics train/kl_ref_is,
    /// train/kl_skipped, iter/kl_max_skipped_steps). Each decision depends only on the
    /// weights and the minibatch, so a resumed run skips what an uninterrupted one does.
    /// Unlike the controller, which reacts an iteration later, it holds back an update that
    /// overshoots. Absent = no limit.
    #[arg(long, value_name = "NATS")]
    pub kl_max: Option<f64>,
    /// Per-token KL estimator in the reward penalty (GRPO's loss term always uses k3).
    #[arg(long, default_value = "k1", value_name = "K")]
    pub kl_estimator: KlEstimator,
    /// Recompute reference log-probabilities (adapter off) even when the rollouts carry them
    /// (--full always recomputes them, with --ref-model).
    #[arg(long)]
    pub recompute_ref: bool,
    /// Recompute the policy's log-probabilities of every rollout ("old" log-probs) instead
    /// of taking the sampler's. By default the sampler's are taken when the rollouts were
    /// sampled by this policy and recomputed rows match them (max |diff| <= 1e-5, temperature
    /// 1, no top-k/top-p): the update's first micro-batch, checked in its training forward
    /// (replayed before a resume; 4 rows in a forward of their own with LoRA dropout);
    /// otherwise every row is recomputed (after a mismatch, the update starts over).
    #[arg(long)]
    pub recompute_old_logprobs: bool,
    /// Truncated importance-sampling correction for the sampler/trainer mismatch: weight each
    /// token's loss by min(pi_old / pi_sampler, CAP). 0 = off (mismatch only reported).
    #[arg(long, default_value_t = 0.0, value_name = "CAP")]
    pub tis_cap: f64,

    /// Record wall-clock and memory figures (run/tokens_per_s, run/seconds_per_step,
    /// run/peak_rss_bytes) in metrics.parquet. Off by default: timings
    /// differ between runs, and the adapter folder (with its metrics) should be
    /// byte-identical for the same inputs, flags and seed. They are always logged with -v.
    #[arg(long)]
    pub record_timings: bool,

    /// LoRA of a fresh policy (and critic) adapter: with --full the --lora-* flags shape
    /// the fresh critic only (an error when --algo has no critic). The optimiser of the
    /// policy (adapter, or every weight with --full); the critic's takes the same values
    /// except --critic-learning-rate. Checkpoints in OUT.checkpoint/ beside --out.
    #[command(flatten)]
    pub train: TrainerArgs,
}
