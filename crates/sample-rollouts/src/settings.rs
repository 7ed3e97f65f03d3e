//! The command line of sample-rollouts and its validation into [`Settings`]: every flag is
//! checked (ranges, paths, a writable output) before the model is loaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rlhf_core::cli::GlobalArgs;
use rlhf_core::error::CoreError;
use rlhf_core::shard::{Shard, ShardArgs};
use rlhf_nn::ModelArgs;

/// Sample K responses per prompt from the base model plus an optional policy adapter, with
/// sampling and reference log-probabilities.
#[derive(Debug, Parser)]
#[command(
    name = "sample-rollouts",
    version,
    about,
    long_about = "Sample K responses per prompt from the base model plus an optional policy \
adapter (KV cache, temperature / top-k / top-p, EOS and stop strings) and write the rollouts \
artifact: prompt and response text and tokens, per-token sampling log-probabilities, per-token \
reference log-probabilities (the same base with the adapter switched off, or --ref-model \
for a fully fine-tuned policy), finish reason, policy id, iteration and seed.\n\n\
Each sample's random stream is seeded from (--seed, --iteration, prompt id, sample index). On \
an x86-64 CPU with AVX2+FMA or AVX-512 (f32 models), whole prompts are packed up to --batch-size \
sequences (at most 32) and every row is computed in the same order whatever else is in its \
batch; on other CPUs each prompt's K samples form one forward batch (unless --pack-prompts). \
Either way the rows do not depend on --batch-size, on --num-shards or on the other prompts in \
the file.\n\n\
Exit codes: 0 success, 1 failure, 2 usage, 3 bad input data, 130/143 stopped by SIGINT/SIGTERM (trainers after a checkpoint)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Policy adapter folder (PEFT layout) applied on the base model. Without it the base
    /// model itself is the policy (policy_id `base`).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Prompts artifact: a Parquet file, a folder of part files, or a glob.
    #[arg(long, value_name = "PATH")]
    pub prompts: PathBuf,
    /// Output rollouts file. With --num-shards > 1 this is a folder that receives this
    /// shard's part file (part-0000I-of-0000N.parquet); read the folder as one dataset.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Responses sampled per prompt (K).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub samples_per_prompt: usize,
    /// Most tokens generated per response (the EOS token included). A response ends at the
    /// tokenizer's EOS or at any `eos_token_id` of the model's generation_config.json
    /// (config.json without one), as transformers' generate.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 samples greedily.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    pub temperature: f64,
    /// Sample only among the k most likely tokens; 0 turns top-k off.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Nucleus sampling: sample only among the most likely tokens whose probabilities sum
    /// to p; 1.0 turns it off.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f64,
    /// Stop strings: a response ends (finish_reason `stop`) once its text contains one, at
    /// the token that completes it; that token and the text stay as generated (the stop
    /// string is not trimmed). Repeat the flag or give several values.
    #[arg(long, value_name = "STR", num_args = 1.., action = clap::ArgAction::Append)]
    pub stop: Vec<String>,
    /// Most sequences decoding at once: whole prompts (K samples each), the next prompt's
    /// samples joining as soon as finished rows leave room (a prompt with more samples decodes
    /// alone). On a CPU with the decode kernels (x86-64 with AVX2+FMA or AVX-512, f32) at
    /// most 32, where each row's numbers do not depend on its batch, so outputs are
    /// byte-identical across batch sizes and shards. On
    /// other CPUs each prompt's K samples are one batch whatever this says (see
    /// --pack-prompts); on CUDA it is used as given.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
    /// Pack prompts up to --batch-size sequences where that is not byte-identical: on a CPU
    /// without the decode kernels (or bf16), and above 32 sequences on one with them. Faster
    /// there, but a row's log-probabilities then depend on its batch neighbours within float
    /// rounding (about 1e-6), so outputs are no longer byte-identical across --batch-size and
    /// --num-shards, and a rounding difference can change a sampled token.
    #[arg(long)]
    pub pack_prompts: bool,
    /// Policy iteration recorded in every row (also part of each sample's seed).
    #[arg(long, default_value_t = 0, value_name = "I")]
    pub iteration: i32,
    /// Skip the reference log-probabilities (the column is written as null).
    #[arg(long)]
    pub no_ref_logprobs: bool,
    /// Reference model folder: ref_logprobs come from this model (loaded as a second,
    /// frozen copy with the same --device and --dtype, no adapter) instead of --model with
    /// --adapter switched off. Use it when --model is a fully fine-tuned policy (a
    /// `ppo-update --full` output), which has no adapter to switch off: pass the model it
    /// was tuned from (the SFT model, the --ref-model of ppo-update). It must have
    /// --model's tokenizer and vocabulary size.
    #[arg(long, value_name = "DIR", conflicts_with = "no_ref_logprobs")]
    pub ref_model: Option<PathBuf>,
    /// Use only the first M prompts (after --split), before sharding.
    #[arg(long, value_name = "M")]
    pub max_prompts: Option<usize>,
    /// Use only prompts of this split (e.g. train or eval). Default: every prompt.
    #[arg(long, value_name = "NAME")]
    pub split: Option<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model_dir: PathBuf,
    pub device: tch::Device,
    pub kind: tch::Kind,
    pub adapter: Option<PathBuf>,
    pub prompts: PathBuf,
    /// The file this process writes (a part file inside --out when sharded).
    pub out_file: PathBuf,
    pub samples_per_prompt: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub stop: Vec<String>,
    /// Sequences per forward batch (whole prompts; a prompt with more samples is one batch).
    pub batch_rows: usize,
    /// Whether a row's numbers are independent of its batch (the CPU decode kernels), so any
    /// packing gives the same bytes.
    pub batch_invariant: bool,
    pub iteration: i32,
    pub ref_logprobs: bool,
    /// The model folder that gives ref_logprobs (None: --model with the adapter off).
    pub ref_model: Option<PathBuf>,
    pub max_prompts: Option<usize>,
    pub split: Option<String>,
    /// Where `--summary-json` goes (details: rows, response tokens, finish reasons,
    /// sampling seconds without model loading, response tokens per second, peak memory).
    pub summary_json: Option<PathBuf>,
    pub shard: Shard,
    pub seed: u64,
}

/// Checks that a model folder looks like one before anything is loaded.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(CoreError::BadInput {
            path: dir.to_path_buf(),
            row: None,
            message: "model folder not found".into(),
        }
        .into());
    }
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            return Err(CoreError::BadInput {
                path: dir.to_path_buf(),
                row: None,
                message: format!("not a model folder: `{f}` is missing"),
            }
            .into());
        }
    }
    Ok(())
}

/// Checks that an adapter folder holds an adapter_config.json.
pub fn check_adapter_dir(dir: &Path) -> Result<()> {
    if !dir.join("adapter_config.json").is_file() {
        return Err(CoreError::BadInput {
            path: dir.to_path_buf(),
            row: None,
            message: if dir.is_dir() {
                "not an adapter folder: `adapter_config.json` is missing".into()
            } else {
                "adapter folder not found".into()
            },
        }
        .into());
    }
    Ok(())
}

/// Checks that `target` can be created (its folder exists or can be made and accepts a
/// file), so a long run does not fail at the very end.
pub fn check_writable(target: &Path) -> Result<()> {
    rlhf_core::atomic::ensure_parent(target)?;
    let probe = rlhf_core::atomic::temp_sibling(target).with_extension("probe");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output {} is not writable", target.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Settings {
    /// Validates the flags; nothing heavy happens here.
    pub fn from_cli(cli: &Cli) -> Result<Settings> {
        let shard = cli.shard.resolve()?;
        let mut inputs = vec![
            ("--model", cli.model.model.as_path()),
            ("--prompts", cli.prompts.as_path()),
        ];
        if let Some(a) = &cli.adapter {
            inputs.push(("--adapter", a.as_path()));
        }
        if let Some(r) = &cli.ref_model {
            inputs.push(("--ref-model", r.as_path()));
        }
        rlhf_core::paths::check_outputs(&[("--out", &cli.out)], &inputs)?;
        if cli.samples_per_prompt == 0 {
            bail!(CoreError::usage("--samples-per-prompt must be at least 1"));
        }
        if cli.max_new_tokens == 0 {
            bail!(CoreError::usage("--max-new-tokens must be at least 1"));
        }
        if !cli.temperature.is_finite() || cli.temperature < 0.0 {
            bail!(CoreError::usage(format!(
                "--temperature {} must be a finite number >= 0 (0 = greedy)",
                cli.temperature
            )));
        }
        if !(cli.top_p > 0.0 && cli.top_p <= 1.0) {
            bail!(CoreError::usage(format!(
                "--top-p {} must be in (0, 1] (1 = off)",
                cli.top_p
            )));
        }
        if cli.batch_size == 0 {
            bail!(CoreError::usage("--batch-size must be at least 1"));
        }
        if cli.max_prompts == Some(0) {
            bail!(CoreError::usage("--max-prompts must be at least 1"));
        }
        if cli.ref_model.is_some() && cli.no_ref_logprobs {
            // clap enforces this for the binary; kept for callers building a Cli by hand
            bail!(CoreError::usage(
                "--ref-model gives the reference log-probabilities that --no-ref-logprobs skips: pass one of them"
            ));
        }
        if let Some(s) = cli.stop.iter().find(|s| s.is_empty()) {
            bail!(CoreError::usage(format!(
                "--stop `{s}`: stop strings must not be empty"
            )));
        }
        let device = cli.model.device()?;
        check_model_dir(&cli.model.model)?;
        if let Some(r) = &cli.ref_model {
            check_model_dir(r).context("--ref-model")?;
        }
        if let Some(a) = &cli.adapter {
            check_adapter_dir(a)?;
            rlhf_core::adapter_meta::check_kind(
                "--adapter",
                a,
                rlhf_core::adapter_meta::AdapterKind::Policy,
            )?;
        }
        rlhf_core::parquet_io::resolve_inputs(&cli.prompts)
            .with_context(|| format!("--prompts {}", cli.prompts.display()))?;
        let out_file = shard.output_for(&cli.out)?;
        check_writable(&out_file)?;
        // Whole prompts per batch: up to what keeps rows independent of their batch where the
        // decode kernels run, up to --batch-size on CUDA or with --pack-prompts, else one.
        let k = cli.samples_per_prompt;
        let invariant = rlhf_nn::generate::batch_invariant_rows(cli.model.kind(), device);
        let batch_rows = match invariant {
            _ if cli.pack_prompts || device.is_cuda() => cli.batch_size,
            Some(max) => cli.batch_size.min(max),
            None => k,
        };
        Ok(Settings {
            model_dir: cli.model.model.clone(),
            device,
            kind: cli.model.kind(),
            adapter: cli.adapter.clone(),
            prompts: cli.prompts.clone(),
            out_file,
            samples_per_prompt: cli.samples_per_prompt,
            max_new_tokens: cli.max_new_tokens,
            temperature: cli.temperature,
            top_k: cli.top_k,
            top_p: cli.top_p,
            stop: cli.stop.clone(),
            batch_rows,
            batch_invariant: invariant.is_some_and(|max| batch_rows <= max),
            iteration: cli.iteration,
            ref_logprobs: !cli.no_ref_logprobs,
            ref_model: cli.ref_model.clone(),
            max_prompts: cli.max_prompts,
            split: cli.split.clone(),
            summary_json: cli.global.summary_json.clone(),
            shard,
            seed: cli.global.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "flag `{id}` has no help text");
        }
        cmd.debug_assert();
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = [
            "sample-rollouts",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompts",
            "p.parquet",
            "--out",
            "o.parquet",
        ];
        for (flag, value, needle) in [
            ("--samples-per-prompt", "0", "samples-per-prompt"),
            ("--temperature=-1", "", "temperature"),
            ("--top-p", "0", "top-p"),
            ("--batch-size", "0", "batch-size"),
        ] {
            let mut args: Vec<&str> = base.to_vec();
            args.extend([flag, value].into_iter().filter(|a| !a.is_empty()));
            let cli = Cli::try_parse_from(&args).unwrap();
            let err = Settings::from_cli(&cli).unwrap_err();
            assert!(err.to_string().contains(needle), "{flag}: {err}");
        }
        let cli = Cli::try_parse_from(base).unwrap();
        let err = Settings::from_cli(&cli).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn ref_model_conflicts_with_no_ref_logprobs() {
        let args = [
            "sample-rollouts",
            "--model",
            "m",
            "--prompts",
            "p.parquet",
            "--out",
            "o.parquet",
            "--ref-model",
            "sft",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.ref_model.as_deref(), Some(Path::new("sft")));
        let err = Cli::try_parse_from([&args[..], &["--no-ref-logprobs"]].concat()).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        // A Cli built by hand is refused by the validation too.
        let mut cli = cli;
        cli.no_ref_logprobs = true;
        let err = Settings::from_cli(&cli).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(CoreError::Usage(m)) if m.contains("--ref-model")),
            "{err}"
        );
    }
}
