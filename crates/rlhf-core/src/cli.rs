//! Command-line plumbing shared by every binary: the global flag group (flattened into each
//! binary's parser), logging set-up, and the mapping from errors to documented exit codes.
//!
//! Exit codes, the same in every stage: 0 success; 1 failure (I/O such as a full disk, a
//! numerical failure, a bug: a retry may help); 2 usage error, clap's or found after
//! parsing; 3 bad input data, corrupt or truncated files included (a retry cannot help);
//! 130 / 143 stopped by SIGINT / SIGTERM.

use std::error::Error as StdError;
use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::error::CoreError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the program failed (a bug, an I/O failure, a numerical failure).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the command line was wrong (clap's own code, and usage errors found later).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the input data was bad (schema mismatch, malformed rows, tokenizer mismatch).
pub const EXIT_BAD_INPUT: u8 = 3;

/// Log output format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags every binary accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (-q warnings only, -qq errors only).
    #[arg(short = 'q', long = "quiet", action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Random seed. The same inputs, flags and seed give byte-identical outputs on CPU.
    #[arg(long, default_value_t = 0, global = true)]
    pub seed: u64,
    /// Compute threads (libtorch intra-op and rayon). Default: all cores.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Write the run's JSON summary to this file (`-`: one line on stdout): the same shape
    /// in every stage (stage, version, outputs with row counts, seconds, metrics, details).
    #[arg(long, value_name = "PATH", global = true)]
    pub summary_json: Option<std::path::PathBuf>,
    /// Read flags from a TOML file: keys are long flag names (`lora-rank = 16`); keys at the
    /// top apply to every stage, a table named after the stage (`[train-rm-lora]`,
    /// `[prep-data.pairs]`) to this one. Flags on the command line override the file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// The table of --config to read instead of the stage's name (dots for nesting).
    #[arg(long, value_name = "NAME", global = true, requires = "config")]
    pub config_section: Option<String>,
    /// Print the resolved settings (every flag with its value, defaults and --config
    /// included) as TOML that --config reads back, and exit without running.
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Stream metrics while the stage runs: Parquet parts
    /// `DIR/<stage>.iter<NNN>.part-<N>.parquet` (metrics schema), complete when visible,
    /// a new one every 10 s and at the end. A rerun of the same stage and iteration
    /// replaces what the earlier attempt streamed. Pipelines pass one DIR for the whole run.
    #[arg(long, value_name = "DIR", env = "RLHF_LIVE_METRICS", global = true)]
    pub live_metrics: Option<std::path::PathBuf>,
    /// Stream metrics to a TensorBoard event file in DIR (`tensorboard --logdir DIR`):
    /// scalars tagged `<stage>/iter<NNN>/<metric>` at each step, flushed as they come.
    #[arg(long, value_name = "DIR", env = "RLHF_TENSORBOARD", global = true)]
    pub tensorboard: Option<std::path::PathBuf>,
}

impl GlobalArgs {
    /// Sets up logging, progress bars and the rayon pool. Call once, first thing in main.
    pub fn init(&self) {
        if (self.config.is_some() && crate::config::effective_args().is_none()) || self.print_config
        {
            // a binary that parsed its flags without rlhf_core::config::parse
            eprintln!("error: --config and --print-config are not read by this binary");
            exit_now(EXIT_USAGE);
        }
        let level = match (self.verbose as i32) - (self.quiet as i32) {
            i32::MIN..=-2 => "error",
            -1 => "warn",
            0 => "info",
            1 => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        // A second init (tests calling into main twice) is harmless: keep the first.
        let _ = match self.log_format {
            LogFormat::Text => builder.without_time().try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        crate::progress::set_enabled(!self.no_progress && self.quiet == 0 && self.verbose == 0);
        crate::signals::install();
        crate::summary::mark_start();
        crate::live::set_targets(crate::live::LiveTargets {
            parts_dir: self.live_metrics.clone(),
            tensorboard_dir: self.tensorboard.clone(),
        });
        if let Some(n) = self.threads {
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global();
        }
    }

    /// Writes `summary` where `--summary-json` asks (nothing without the flag).
    pub fn write_summary(&self, summary: crate::summary::StageSummary) -> crate::Result<()> {
        match &self.summary_json {
            Some(target) => summary.write(target),
            None => Ok(()),
        }
    }

    /// The number of compute threads to use.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Decides whether an error (one link of a cause chain) is caused by bad input data.
pub type InputClassifier = fn(&(dyn StdError + 'static)) -> bool;

/// The core crate's classifier: schema mismatches, malformed rows, tokenizer mismatches,
/// unreadable or corrupt input files.
pub fn core_is_bad_input(err: &(dyn StdError + 'static)) -> bool {
    err.downcast_ref::<CoreError>()
        .is_some_and(CoreError::is_bad_input)
}

/// True for a usage error found after parsing ([`CoreError::Usage`]) or for an error type
/// that says so through [`UsageError`].
fn is_usage(err: &(dyn StdError + 'static)) -> bool {
    matches!(err.downcast_ref::<CoreError>(), Some(CoreError::Usage(_)))
        || err.downcast_ref::<UsageError>().is_some()
}

/// A usage error of a stage's own (a flag value or combination that cannot work), for
/// stages whose errors are not `CoreError`s: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error, by the first rule that matches any link of its chain:
/// stopped by a signal (130/143), usage (2), bad input (3); else failure (1).
pub fn exit_code_for(err: &anyhow::Error, classifiers: &[InputClassifier]) -> u8 {
    exit_code_with(err, classifiers, &[])
}

/// [`exit_code_for`] with classifiers of a stage's own usage errors.
pub fn exit_code_with(
    err: &anyhow::Error,
    classifiers: &[InputClassifier],
    usage: &[InputClassifier],
) -> u8 {
    if let Some(signal) = err
        .chain()
        .find_map(|e| match e.downcast_ref::<CoreError>() {
            Some(CoreError::Interrupted { signal, .. }) => Some(*signal),
            _ => None,
        })
    {
        return crate::signals::exit_code(signal);
    }
    if err
        .chain()
        .any(|e| is_usage(e) || usage.iter().any(|classify| classify(e)))
    {
        return EXIT_USAGE;
    }
    let bad = err
        .chain()
        .any(|e| core_is_bad_input(e) || classifiers.iter().any(|classify| classify(e)));
    if bad {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}

/// Ends a stage: prints an error with its cause chain on stderr and exits with the matching
/// exit code (0 on success), by [`exit_now`]. `classifiers` extend the bad-input detection
/// to other crates' error types. Call it last in `main`, once every output is written.
pub fn finish(result: anyhow::Result<()>, classifiers: &[InputClassifier]) -> ! {
    finish_with(result, classifiers, &[])
}

/// [`finish`] with classifiers of a stage's own usage errors (exit 2).
pub fn finish_with(
    result: anyhow::Result<()>,
    classifiers: &[InputClassifier],
    usage: &[InputClassifier],
) -> ! {
    exit_now(exit_code_reported(result, classifiers, usage))
}

/// The exit code of a stage's result; an error is printed with its cause chain on stderr.
fn exit_code_reported(
    result: anyhow::Result<()>,
    classifiers: &[InputClassifier],
    usage: &[InputClassifier],
) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        Err(err) => {
            let code = exit_code_with(&err, classifiers, usage);
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            code
        }
    }
}

/// Flushes stdout and stderr and ends the process with `code` at once (`_exit`), without
/// running C++ static destructors. A stage that loaded libtorch spent 65-90 ms in them at
/// every exit (deregistering its operators): with three stages, about 8% of an RL-loop
/// iteration of 3 s. They free nothing the end of the process does not. Every output is
/// complete and renamed into place before a stage gets here, and Rust runs no destructors at
/// exit either way.
pub fn exit_now(code: u8) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    signal_hook::low_level::exit(i32::from(code))
}

/// A stage whose issue is still open: an honest refusal, never fake output.
pub fn not_implemented(stage: &str) -> anyhow::Result<()> {
    anyhow::bail!("{stage} is not implemented yet; see the project's open issues")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_anywhere_in_the_chain_gives_exit_3() {
        let err = anyhow::Error::new(CoreError::BadInput {
            path: "x.jsonl".into(),
            row: Some(4),
            message: "missing field `chosen`".into(),
        })
        .context("reading preferences");
        assert_eq!(exit_code_for(&err, &[]), EXIT_BAD_INPUT);
        let other = anyhow::anyhow!("disk full").context("writing");
        assert_eq!(exit_code_for(&other, &[]), EXIT_FAILURE);
        let missing = anyhow::Error::new(CoreError::io(
            "opening",
            "prompts.parquet",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
        assert_eq!(exit_code_for(&missing, &[]), EXIT_BAD_INPUT);
        let write = anyhow::Error::new(CoreError::io(
            "writing",
            "out.parquet",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ));
        assert_eq!(exit_code_for(&write, &[]), EXIT_FAILURE);
        let full_while_reading = anyhow::Error::new(CoreError::io(
            "reading",
            "in.parquet",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ));
        assert_eq!(exit_code_for(&full_while_reading, &[]), EXIT_FAILURE);
    }

    #[test]
    fn usage_and_signals_win_over_the_rest() {
        let usage = anyhow::Error::new(CoreError::Usage("--num-shards 0".into())).context(
            CoreError::NoInput {
                pattern: "x".into(),
            },
        );
        assert_eq!(exit_code_for(&usage, &[]), EXIT_USAGE);
        let own = anyhow::Error::new(UsageError("--epochs 0".into())).context("settings");
        assert_eq!(exit_code_for(&own, &[]), EXIT_USAGE);
        let stopped =
            anyhow::Error::new(crate::signals::interrupted_error(15, "step 3")).context("training");
        assert_eq!(exit_code_for(&stopped, &[]), 143);
        let corrupt = anyhow::Error::new(CoreError::parquet(
            "reading footer of",
            "r.parquet",
            std::io::Error::other("EOF"),
        ));
        assert_eq!(exit_code_for(&corrupt, &[]), EXIT_BAD_INPUT);
    }

    #[test]
    fn bad_input_message_names_file_and_row() {
        let err = CoreError::BadInput {
            path: "data/prefs.jsonl".into(),
            row: Some(12),
            message: "empty text".into(),
        };
        assert_eq!(err.to_string(), "data/prefs.jsonl row 12: empty text");
    }
}
