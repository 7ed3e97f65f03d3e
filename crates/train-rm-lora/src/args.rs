//! The command line of train-rm-lora: every flag with its `///` doc (the --help text) and
//! default. Raw flags only; `settings` validates them before any heavy work.

use std::path::PathBuf;

use clap::{ArgGroup, Parser, ValueEnum};
use rlhf_core::cli::GlobalArgs;

/// How the pairs of one ranking group are weighted in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupWeighting {
    /// A K-way ranking counts as one example: each of its C(K,2) pairs gets weight/C(K,2)
    /// (InstructGPT, Ouyang et al. 2022), so large groups do not dominate.
    PerGroup,
    /// Every pair counts fully (its `weight` column only).
    PerPair,
}

/// Train a reward model: LoRA adapter plus scalar score head on a frozen base, from
/// preferences and/or ratings.
#[derive(Debug, Parser)]
#[command(
    name = "train-rm-lora",
    version,
    about,
    long_about = "Train a reward model on a frozen base: LoRA adapter (by default on q_proj,v_proj; --lora-targets) plus a \
fully trainable scalar score head (or --full: every weight), from preference pairs (Bradley-Terry with soft \
labels; ties = 0.5; all pairs of a ranking group in one batch; optional margin) and/or ratings (thumbs: \
binary cross-entropy). Writes a PEFT SEQ_CLS adapter folder with rlhf_state.json (reward normalisation) and \
metrics.parquet.\n\nExit codes: 0 success, 1 failure (incl. NaN/inf loss), 2 usage, 3 bad input data \
(schema, rows, tokenizer mismatch), 130/143 stopped by SIGINT/SIGTERM (after a checkpoint)."
)]
#[command(mut_arg("learning_rate", |a| a.default_value("1e-4").required(false)))]
#[command(mut_arg("lr_schedule", |a| a.default_value("linear").required(false)))]
#[command(mut_arg("final_lr_fraction", |a| a.default_value("0").required(false)))]
#[command(group(ArgGroup::new("data").required(true).multiple(true).args(["preferences", "ratings"])))]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(flatten)]
    pub model: rlhf_nn::ModelArgs,

    /// Preference pairs (preferences artifact: file, folder of part files, or glob).
    /// Rows with split=eval are held out for evaluation.
    #[arg(long, value_name = "PARQUET")]
    pub preferences: Option<PathBuf>,

    /// Pointwise ratings (ratings artifact), trained with binary cross-entropy; `rating`
    /// must lie in [0, 1] (thumbs up 1, down 0, or a probability).
    #[arg(long, value_name = "PARQUET")]
    pub ratings: Option<PathBuf>,

    /// Output adapter folder (written atomically). With --ensemble N, members go to
    /// OUT/member-0 ... OUT/member-{N-1} and OUT/ensemble.json lists them.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Train every base weight plus the score head instead of LoRA (the PERL comparison).
    /// Same code path; the output folder is a full *ForSequenceClassification model.
    /// Not combinable with --ensemble (N full copies of the base).
    #[arg(long, conflicts_with = "ensemble")]
    pub full: bool,

    /// Passes over the training data (the run stops at --max-steps if that comes first).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive)]
    pub epochs: usize,

    /// Stop after this many optimiser steps (default: as many as --epochs give).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_steps: Option<usize>,

    /// Examples per micro-batch: preference pairs plus ratings. A ranking group is never
    /// split, so a batch holding one can be larger.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = positive)]
    pub batch_size: usize,

    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive)]
    pub grad_accum: usize,

    /// Longest prompt+response in tokens; longer sequences lose prompt tokens from the left
    /// first, then response tokens from the right (counts are logged and recorded).
    #[arg(long, value_name = "TOKENS", default_value_t = 512, value_parser = positive)]
    pub max_seq_len: usize,

    /// Label smoothing epsilon: targets y become y(1-eps) + eps/2.
    #[arg(long, value_name = "EPS", default_value_t = 0.0, value_parser = fraction)]
    pub label_smoothing: f64,

    /// Noise-robust likelihood: P(chosen) = (1-EPS) sigmoid(r_c - r_r) + EPS/2, i.e. the
    /// labeller answers at random with probability EPS (Christiano et al. 2017 use 0.1).
    #[arg(long, value_name = "EPS", default_value_t = 0.0, value_parser = fraction)]
    pub noise_robust: f64,

    /// Margin scale: the logit becomes r_c - r_r - SCALE*margin*(2*label-1), using the
    /// `margin` column (null = 0; Llama 2). Ties get no margin. 0 = off.
    #[arg(long, value_name = "SCALE", default_value_t = 0.0, value_parser = non_negative)]
    pub margin: f64,

    /// Reward-centering coefficient: adds COEF * mean((r_c + r_r)^2) over pairs
    /// (Eisenstein et al. 2023), keeping rewards near zero. 0 = off.
    #[arg(long, value_name = "COEF", default_value_t = 0.0, value_parser = non_negative)]
    pub center_coef: f64,

    /// Weight of the ratings (BCE) loss relative to the pair loss.
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = non_negative)]
    pub ratings_weight: f64,

    /// How pairs expanded from one ranking group (same group_id) are weighted.
    #[arg(long, value_name = "HOW", value_enum, default_value_t = GroupWeighting::PerGroup)]
    pub group_weighting: GroupWeighting,

    /// Train N reward models on bootstrap resamples of the training data (Christiano et al.
    /// 2017), written as OUT/member-0 ... OUT/member-{N-1}.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive)]
    pub ensemble: usize,

    /// Reference set for reward normalisation: a preferences file (its chosen responses),
    /// a ratings file (its responses) or a rollouts file (its responses). Default: the
    /// chosen responses of the eval pairs (else of all pairs, else the rated responses).
    #[arg(long, value_name = "PARQUET")]
    pub normalize_with: Option<PathBuf>,

    /// Also store a scale so normalised rewards on the reference set have std 1.
    #[arg(long)]
    pub normalize_scale: bool,

    /// Evaluate on the eval split every N optimiser steps (0 = only at the end).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub eval_every: usize,

    /// Record wall-clock and memory figures (run/seconds_per_step, run/peak_rss_bytes) in
    /// metrics.parquet. Off by default: they differ between runs, and the adapter folder
    /// should be byte-identical for the same inputs, flags and seed.
    #[arg(long)]
    pub record_timings: bool,

    /// LoRA, optimiser, and checkpoints in OUT.checkpoint/ (a rerun of the same command
    /// resumes from them).
    #[command(flatten)]
    pub train: rlhf_algo::trainer_args::TrainerArgs,
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

/// A finite number >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is negative; expected a number >= 0"))
    }
}

/// A probability in [0, 1).
fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside [0, 1)"))
    }
}

/// An integer >= 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a whole number >= 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed_and_ranges_are_enforced() {
        Cli::command().debug_assert();
        let base = ["train-rm-lora", "--model", "m", "--out", "o"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        // Neither preferences nor ratings: usage error.
        assert!(parse(&[]).is_err());
        assert!(parse(&["--preferences", "p.parquet"]).is_ok());
        assert!(parse(&["--ratings", "r.parquet", "--noise-robust", "1.5"]).is_err());
        assert!(parse(&["--ratings", "r.parquet", "--batch-size", "0"]).is_err());
        let nan = parse(&["--ratings", "r.parquet", "--learning-rate", "nan"]).unwrap();
        assert!(nan.train.optim.validate().is_err());
        let cli = parse(&["--preferences", "p", "--target-modules", "q_proj,v_proj"]).unwrap();
        assert_eq!(cli.train.lora.lora_targets, ["q_proj", "v_proj"]);
        assert_eq!(cli.train.lora.rank(), 8);
        assert_eq!(cli.train.lora.alpha(), 16.0);
        assert_eq!(cli.train.optim.learning_rate, 1e-4);
        assert_eq!(cli.train.optim.final_lr_fraction, 0.0);
        assert_eq!(cli.group_weighting, GroupWeighting::PerGroup);
    }
}
