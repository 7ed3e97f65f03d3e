//! The command line of label-pairs: `serve` (the labelling page) and `export` (the journal
//! to a preferences file). The global flags (-v/-q, --seed, --summary-json, --config, ...)
//! come from `rlhf_core::cli::GlobalArgs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rlhf_core::cli::GlobalArgs;

const ABOUT: &str = "\
Human preference labelling: `serve` shows a person a prompt and two of its sampled \
responses side by side, queued by reward-ensemble disagreement, and journals every answer; \
`export` turns the journal into a preferences file that train-rm-lora trains on. Does not \
need libtorch.

Steps: sample-rollouts (two or more samples per prompt) -> [score-rewards with two or more \
--reward-model, for the disagreement queue] -> label-pairs serve -> label-pairs export -> \
train-rm-lora --preferences.

Exit codes: 0 success, 1 failure (I/O, the address in use), 2 usage (a bad flag, --out \
overlapping an input, a labelling folder of other rollouts or in use by another server), 3 \
bad input data (unreadable rollouts or scores, scores without ensemble columns, a damaged \
journal, rollouts that changed since labelling), 130/143 stopped by SIGINT/SIGTERM (the \
usual way to stop `serve`: every acknowledged answer is already on disk).";

const SERVE_ABOUT: &str = "\
Serve the labelling page until stopped (Ctrl-C). It prints the page's address with a \
random access token on stderr; every request must carry the token (403 otherwise). Open it \
with &labeller=NAME (or type a name on the page): several people can label at once.

The page shows the prompt and two responses (which one is on the left is drawn per pair \
and labeller from --seed, and recorded). Keys: 1 or Left arrow = left is better, 2 or Right \
arrow = right is better, e = equal, c = can't tell, s = skip, u = undo the last answer; \
an optional reason goes with the answer. Responses are shown as plain text, never as HTML.

Pairs: every two samples of one prompt_id (two with the same response text are left out). \
Queue order with --scores (Christiano et al. 2017: ask where the ensemble disagrees): pairs \
whose ensemble members (rm_0, rm_1, ...) split most evenly on which response is better \
come first, i.e. ascending |votes - 0.5| with votes = the fraction of members scoring the \
first response higher; then, and alone when the file has only rm_mean and rm_std, ascending \
|p - 0.5| with p = Phi((m_a - m_b) / sqrt(s_a^2 + s_b^2)) from each response's ensemble \
mean m and standard deviation s; remaining ties and unscored pairs (last) in a random order \
from --seed. Without --scores the queue is random, from --seed.

Nothing is lost: each answer (and each undo) is appended to OUT/journal.jsonl and \
fsync'd before the page moves on. Kill the server at any moment and start it again on the \
same --out to resume; a folder that holds a journal of other rollouts, scores or seed is \
refused. A pair shown to a labeller is reserved for them for 30 minutes.";

const EXPORT_ABOUT: &str = "\
Write the standing answers of a labelling folder (undone ones excluded) as a preferences \
file: one row per answer, chosen/rejected as the labeller judged, label 1.0 (or 0.5 for \
equal, chosen = the first response by rollout id), weight 1, group_id = the pair (so \
train-rm-lora's per-group weighting counts a pair labelled by several people once), split \
by prompt, tokens from the rollouts, extra nullable columns labeller, reason, \
chosen_rollout_id, rejected_rollout_id and chosen_side (left/right as shown). Can't-tell \
and skip answers are left out and counted. Per-labeller counts and Cohen's kappa between \
each two labellers on the pairs both answered (categories: first better, second better, \
equal, can't tell; skips excluded) go to stderr and --summary-json.

The rollouts are read from the path the journal records (or --rollouts) and must be the \
same content (blake3) that was labelled.";

/// Label preference pairs in the browser and export them as a preferences file.
#[derive(Debug, Parser)]
#[command(name = "label-pairs", version, about, long_about = ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the labelling page; every answer goes to OUT/journal.jsonl.
    #[command(long_about = SERVE_ABOUT)]
    Serve(ServeArgs),
    /// Write a labelling folder's answers as a preferences file.
    #[command(long_about = EXPORT_ABOUT)]
    Export(ExportArgs),
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number >= 1")),
    }
}

/// Flags of `label-pairs serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Rollouts to label (sample-rollouts output: a file or a folder of part files), two or
    /// more samples per prompt.
    #[arg(long, value_name = "PATH")]
    pub rollouts: PathBuf,
    /// Scores of those rollouts from a reward-model ensemble (score-rewards with two or
    /// more --reward-model: columns rm_0, rm_1, ..., rm_mean, rm_std): pairs the ensemble
    /// disagrees on come first. Without it the queue is random (from --seed).
    #[arg(long, value_name = "PATH")]
    pub scores: Option<PathBuf>,
    /// Labelling folder: OUT/journal.jsonl receives every answer. Restart on the same
    /// folder to resume.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Address and port to listen on. The default serves this machine only; another
    /// address exposes the page to the network, where the token is its only protection and
    /// traffic is not encrypted. Port 0 picks a free port (printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8765")]
    pub bind: String,
    /// Show each pair to up to K labellers (K >= 2 measures their agreement; skips do not
    /// count towards K).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = positive)]
    pub overlap: usize,
}

/// Flags of `label-pairs export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Labelling folder written by `label-pairs serve` (its --out).
    #[arg(long = "in", value_name = "DIR")]
    pub input: PathBuf,
    /// Output preferences file (Parquet), written atomically.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// The labelled rollouts, when they moved since `serve` (default: the path the journal
    /// records); their content must be unchanged.
    #[arg(long, value_name = "PATH")]
    pub rollouts: Option<PathBuf>,
    /// Fraction of prompts (by id) whose pairs go to the eval split.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    pub eval_fraction: f64,
}
