//! The command line of score-rewards and its validation into [`Settings`]: reward sources
//! are parsed, their output columns named and checked for collisions, and paths checked,
//! before any model is loaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rlhf_core::cli::GlobalArgs;
use rlhf_core::compute::{DeviceName, Dtype};
use rlhf_core::error::CoreError;
use rlhf_core::shard::{Shard, ShardArgs};

use crate::rules::Rule;

/// Score rollouts with reward models and rule rewards; write one scores row per rollout.
#[derive(Debug, Parser)]
#[command(
    name = "score-rewards",
    version,
    about,
    long_about = "Score rollouts with reward models (their stored normalisation applied), \
rule rewards and the embedded task's oracle, each written to its own column, and write their \
weighted sum plus penalties as `reward` (what training uses) with the penalties in `penalty`.\n\n\
Reward models: LoRA reward adapters (PEFT SEQ_CLS, LoRA + score head) on the base --model, \
all attached to one copy of it, and fully tuned *ForSequenceClassification model folders \
(train-rm-lora --full, or saved by transformers) with their own weights and tokenizer; an \
ensemble may mix both. --model is needed only for adapters. A run with reward models \
continues in score-rewards-rm, installed beside this binary (it links libtorch; rule rewards \
alone do not need it), with the same arguments and exit codes.\n\n\
Columns: `rm` for one reward model; `rm_0`, `rm_1`, ..., `rm_mean` and `rm_std` for an \
ensemble (several --reward-model flags, or an ensemble folder with ensemble.json); one column \
per --rule (its kind, or name=...).\n\n\
Rules: length:target=N[,unit=tokens|words|chars] (-|n-N|/N), regex:PATTERN (1 on a match), \
contains:WORD (1 when present), excludes:WORD (-1 when present), \
exact:prompts=FILE[,column=reference] (1 when the trimmed response equals the prompt's \
reference), gold[:W] (the embedded task's oracle). Each takes ,weight=W (default 1; 0 \
records the column without adding it to `reward`) and ,name=COLUMN.\n\n\
Reward statistics (mean, std, quantiles, correlation with response length) go to stderr and \
to the lineage in the file's footer.\n\n\
Exit codes: 0 success, 1 failure, 2 usage, 3 bad input data (e.g. rollouts made with another \
tokenizer than the reward model's), 130/143 stopped by SIGINT/SIGTERM."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Rollouts artifact: a Parquet file, a folder of part files, or a glob.
    #[arg(long, value_name = "PATH")]
    pub rollouts: PathBuf,
    /// Output scores file. With --num-shards > 1 this is a folder that receives this
    /// shard's part file.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Reward model folder, optionally with a weight: DIR or DIR:W. Either a reward adapter
    /// (LoRA + score head, on --model) or a fully tuned *ForSequenceClassification model
    /// folder (train-rm-lora --full, or saved by transformers), each normalised by its
    /// rlhf_state.json when it has one. Repeat for an ensemble (adapters and full models
    /// may mix); an ensemble folder (ensemble.json) expands to its members. With several
    /// members give a weight to all or to none (none: `reward` gets rm_mean).
    #[arg(long = "reward-model", value_name = "DIR[:W]")]
    pub reward_models: Vec<String>,
    /// Base model folder the reward adapters sit on (needed when a --reward-model is an
    /// adapter; full reward models bring their own weights and tokenizer).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Compute device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// Weight and activation type of the base model.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// A rule reward (see the list above), e.g. length:target=20,weight=0.1 or gold:0.
    /// Repeatable.
    #[arg(long = "rule", value_name = "SPEC")]
    pub rules: Vec<String>,
    /// Added to `reward` (and recorded in `penalty`) for every response that did not end
    /// by itself (finish_reason `length`); `eos` and `stop` count as ended. Usually < 0.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "R",
        allow_hyphen_values = true
    )]
    pub eos_penalty: f32,
    /// Ensembles only: subtract this times rm_std from `reward` (recorded in `penalty`),
    /// a pessimistic reward for uncertain members.
    #[arg(long, default_value_t = 0.0, value_name = "C")]
    pub rm_std_penalty: f32,
    /// Re-tokenize the rollout text with a reward model's own tokenizer instead of refusing
    /// rollouts made with another tokenizer (reward models whose tokenizer is the rollouts'
    /// keep scoring the rollouts' token ids). A rollout whose prompt came as chat messages
    /// (the rollouts' `messages` column) is rendered with the reward model's chat template:
    /// the messages plus the response as the assistant's turn, as transformers'
    /// `apply_chat_template(..., tokenize=True)` makes it; without messages, or when the
    /// reward model's folder has no chat template, its prompt text (as rendered for the
    /// policy) and response are encoded. The summary and lineage record which, per column
    /// (`retokenized`: chat_template, prompt_text or mixed).
    #[arg(long)]
    pub retokenize: bool,
    /// Sequences per reward-model forward batch on CUDA, and on CPU with --pack-prompts
    /// (whole prompts are packed). Otherwise, on CPU, the samples of one prompt are one batch
    /// whatever this says, so CPU scores do not depend on it or on sharding.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
    /// Pack several prompts per forward batch on CPU too (up to --batch-size sequences):
    /// faster, but a score then depends on its batch neighbours within float rounding
    /// (about 1e-6), so scores are no longer byte-identical across --batch-size and
    /// --num-shards.
    #[arg(long)]
    pub pack_prompts: bool,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// What a reward model folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardModelKind {
    /// A PEFT SEQ_CLS adapter (LoRA + score head) on the base --model.
    Adapter,
    /// A fully tuned *ForSequenceClassification model folder with its own tokenizer.
    Full,
}

impl RewardModelKind {
    /// A folder with config.json and no adapter_config.json is a full model; anything else
    /// is taken for an adapter (and refused later when adapter_config.json is missing).
    pub fn of(dir: &Path) -> RewardModelKind {
        if !dir.join("adapter_config.json").is_file() && dir.join("config.json").is_file() {
            RewardModelKind::Full
        } else {
            RewardModelKind::Adapter
        }
    }
}

/// One reward model (an ensemble has several).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardModelSpec {
    pub dir: PathBuf,
    pub kind: RewardModelKind,
    /// Weight in `reward`.
    pub weight: f32,
    /// Output column (`rm` or `rm_K`).
    pub column: String,
}

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rollouts: PathBuf,
    pub out_file: PathBuf,
    pub model_dir: Option<PathBuf>,
    pub reward_models: Vec<RewardModelSpec>,
    pub rules: Vec<Rule>,
    pub eos_penalty: f32,
    pub rm_std_penalty: f32,
    pub retokenize: bool,
    pub batch_size: usize,
    /// Several prompts per forward batch (--pack-prompts; the reward models pack on CUDA in
    /// any case, [`crate::run::RewardModelBackend::packs_prompts`]).
    pub pack_prompts: bool,
    /// Where `--summary-json` goes (details: reward statistics, scoring seconds without
    /// model loading, sequences per second, peak memory).
    pub summary_json: Option<PathBuf>,
    pub shard: Shard,
}

/// Splits `DIR[:W]`: the part after the last `:` is a weight only when it parses as one.
pub fn split_weight(spec: &str) -> Result<(PathBuf, Option<f32>)> {
    if let Some((dir, w)) = spec.rsplit_once(':') {
        if let Ok(weight) = w.trim().parse::<f32>() {
            if !weight.is_finite() {
                bail!(CoreError::usage(format!(
                    "--reward-model `{spec}`: weight must be finite"
                )));
            }
            return Ok((PathBuf::from(dir), Some(weight)));
        }
    }
    Ok((PathBuf::from(spec), None))
}

/// Member folders of an ensemble folder (ensemble.json), or the folder itself.
pub fn expand_ensemble(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("ensemble.json");
    if !index.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let text =
        std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
        path: index.clone(),
        row: None,
        message: format!("invalid JSON: {e}"),
    })?;
    let members = v
        .get("members")
        .and_then(|m| m.as_array())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| CoreError::BadInput {
            path: index.clone(),
            row: None,
            message: "expected {\"members\": [\"member-0\", ...]} with at least one member".into(),
        })?;
    members
        .iter()
        .map(|m| {
            m.as_str().map(|s| dir.join(s)).ok_or_else(|| {
                CoreError::BadInput {
                    path: index.clone(),
                    row: None,
                    message: format!("member {m} is not a folder name"),
                }
                .into()
            })
        })
        .collect()
}

/// Checks that a full reward model folder is a one-label *ForSequenceClassification model
/// with a tokenizer (config.json only; the weights are checked when they load).
pub fn check_full_folder(dir: &Path) -> Result<()> {
    let bad = |message: String| -> anyhow::Error {
        CoreError::BadInput {
            path: dir.to_path_buf(),
            row: None,
            message,
        }
        .into()
    };
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
        path: path.clone(),
        row: None,
        message: format!("invalid JSON: {e}"),
    })?;
    let archs = cfg.get("architectures").cloned().unwrap_or_default();
    let seqcls = archs.as_array().is_some_and(|a| {
        a.iter()
            .filter_map(|x| x.as_str())
            .any(|x| x.ends_with("ForSequenceClassification"))
    });
    if !seqcls {
        return Err(bad(format!(
            "not a reward model: config.json's architectures are {archs}, expected a \
             *ForSequenceClassification model (a `score` head); a reward adapter would have \
             `adapter_config.json`\n  hint: give a folder written by train-rm-lora (with or \
             without --full)"
        )));
    }
    let labels = match cfg.get("num_labels").and_then(|x| x.as_u64()) {
        Some(n) => Some(n as usize),
        None => cfg
            .get("id2label")
            .and_then(|x| x.as_object())
            .map(|m| m.len()),
    };
    if let Some(n) = labels.filter(|&n| n != 1) {
        return Err(bad(format!(
            "config.json gives the score head {n} labels; a reward model has one"
        )));
    }
    if !dir.join("tokenizer.json").is_file() {
        return Err(bad(
            "a full reward model needs its tokenizer: `tokenizer.json` is missing".into(),
        ));
    }
    Ok(())
}

/// Columns no rule may take.
const RESERVED: [&str; 5] = ["rollout_id", "reward", "penalty", "rm_mean", "rm_std"];

impl Settings {
    /// Validates the flags; nothing heavy happens here.
    pub fn from_cli(cli: &Cli) -> Result<Settings> {
        // first: a device name that is none is a usage error, before any input is read (the
        // reward models' binary checks before this that the device exists)
        DeviceName::parse(&cli.device).map_err(CoreError::usage)?;
        let shard = cli.shard.resolve()?;
        if cli.batch_size == 0 {
            bail!(CoreError::usage("--batch-size must be at least 1"));
        }
        if !cli.eos_penalty.is_finite() || !cli.rm_std_penalty.is_finite() {
            bail!(CoreError::usage(
                "--eos-penalty and --rm-std-penalty must be finite"
            ));
        }
        let rules = cli
            .rules
            .iter()
            .map(|s| Rule::parse(s))
            .collect::<Result<Vec<_>>>()?;
        let mut members: Vec<(PathBuf, Option<f32>)> = Vec::new();
        for spec in &cli.reward_models {
            let (dir, weight) = split_weight(spec)?;
            for m in expand_ensemble(&dir)? {
                members.push((m, weight));
            }
        }
        let explicit = members.iter().filter(|m| m.1.is_some()).count();
        if members.len() > 1 && explicit != 0 && explicit != members.len() {
            bail!(CoreError::usage(format!(
                "{} reward models but {explicit} weights: give a weight to every --reward-model or to none",
                members.len()
            )));
        }
        let n = members.len();
        let reward_models: Vec<RewardModelSpec> = members
            .into_iter()
            .enumerate()
            .map(|(k, (dir, w))| RewardModelSpec {
                kind: RewardModelKind::of(&dir),
                dir,
                weight: w.unwrap_or(1.0 / n as f32),
                column: if n == 1 {
                    "rm".into()
                } else {
                    format!("rm_{k}")
                },
            })
            .collect();
        if rules.is_empty() && reward_models.is_empty() {
            bail!(CoreError::usage(
                "nothing to score: give at least one --reward-model or --rule"
            ));
        }
        let mut names: Vec<&str> = reward_models.iter().map(|m| m.column.as_str()).collect();
        for r in &rules {
            if RESERVED.contains(&r.name.as_str()) || names.contains(&r.name.as_str()) {
                bail!(CoreError::usage(format!(
                    "two reward sources would write column `{}`; add ,name=OTHER to the rule",
                    r.name
                )));
            }
            names.push(&r.name);
        }
        if n < 2 && cli.rm_std_penalty != 0.0 {
            bail!(CoreError::usage(
                "--rm-std-penalty needs an ensemble (two or more reward models)"
            ));
        }
        let adapter = reward_models
            .iter()
            .find(|rm| rm.kind == RewardModelKind::Adapter);
        let model_dir = match (&cli.model, adapter) {
            (None, None) => None,
            (None, Some(rm)) => bail!(CoreError::usage(format!(
                "--reward-model {} needs --model, the base model folder the adapter sits on \
                 (a fully tuned reward model, a folder with config.json and no \
                 adapter_config.json, needs none)",
                rm.dir.display()
            ))),
            (Some(m), None) => {
                if n == 0 {
                    tracing::warn!("--model {} is not used without --reward-model", m.display());
                } else {
                    tracing::warn!(
                        "--model {} is not used: every --reward-model is a full model",
                        m.display()
                    );
                }
                None
            }
            (Some(m), Some(_)) => Some(m.clone()),
        };
        if let Some(m) = &model_dir {
            for f in ["config.json", "tokenizer.json"] {
                if !m.join(f).is_file() {
                    return Err(CoreError::BadInput {
                        path: m.clone(),
                        row: None,
                        message: format!("not a model folder: `{f}` is missing"),
                    }
                    .into());
                }
            }
        }
        for rm in &reward_models {
            match rm.kind {
                RewardModelKind::Adapter => {
                    if !rm.dir.join("adapter_config.json").is_file() {
                        return Err(CoreError::BadInput {
                            path: rm.dir.clone(),
                            row: None,
                            message: "not a reward model folder: neither a reward adapter \
                                      (`adapter_config.json` is missing) nor a full model \
                                      (`config.json` is missing)"
                                .into(),
                        }
                        .into());
                    }
                    rlhf_core::adapter_meta::check_kind(
                        "--reward-model",
                        &rm.dir,
                        rlhf_core::adapter_meta::AdapterKind::Reward,
                    )?;
                }
                RewardModelKind::Full => check_full_folder(&rm.dir)?,
            }
        }
        let mut inputs = vec![("--rollouts", cli.rollouts.as_path())];
        if let Some(m) = &cli.model {
            inputs.push(("--model", m.as_path()));
        }
        for rm in &reward_models {
            inputs.push(("--reward-model", rm.dir.as_path()));
        }
        rlhf_core::paths::check_outputs(&[("--out", &cli.out)], &inputs)?;
        rlhf_core::parquet_io::resolve_inputs(&cli.rollouts)
            .with_context(|| format!("--rollouts {}", cli.rollouts.display()))?;
        let out_file = shard.output_for(&cli.out)?;
        rlhf_core::atomic::ensure_parent(&out_file)?;
        Ok(Settings {
            rollouts: cli.rollouts.clone(),
            out_file,
            model_dir,
            reward_models,
            rules,
            eos_penalty: cli.eos_penalty,
            rm_std_penalty: cli.rm_std_penalty,
            retokenize: cli.retokenize,
            batch_size: cli.batch_size,
            pack_prompts: cli.pack_prompts,
            summary_json: cli.global.summary_json.clone(),
            shard,
        })
    }
}

/// Reward-model specs in column order (for callers that only need names and weights).
pub fn rm_columns(specs: &[RewardModelSpec]) -> Vec<(String, f32)> {
    specs.iter().map(|s| (s.column.clone(), s.weight)).collect()
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
            if id != "help" && id != "version" {
                assert!(arg.get_help().is_some(), "flag `{id}` has no help text");
            }
        }
        cmd.debug_assert();
    }

    #[test]
    fn weights_split_off_paths() {
        assert_eq!(split_weight("rm").unwrap(), (PathBuf::from("rm"), None));
        assert_eq!(
            split_weight("runs/rm:0.5").unwrap(),
            (PathBuf::from("runs/rm"), Some(0.5))
        );
        assert_eq!(
            split_weight("c:/rm").unwrap(),
            (PathBuf::from("c:/rm"), None)
        );
        assert_eq!(
            split_weight("rm:-2").unwrap(),
            (PathBuf::from("rm"), Some(-2.0))
        );
    }

    fn settings(args: &[&str]) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let rollouts = dir.path().join("r.parquet");
        std::fs::write(&rollouts, b"x").unwrap();
        let out = dir.path().join("s.parquet");
        let mut all = vec![
            "score-rewards",
            "--rollouts",
            rollouts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        all.extend(args);
        Settings::from_cli(&Cli::try_parse_from(&all)?)
    }

    #[test]
    fn sources_are_checked_before_anything_runs() {
        let s = settings(&[
            "--rule",
            "gold:0",
            "--rule",
            "length:target=5,weight=0.1",
            "--eos-penalty",
            "-1",
        ])
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.eos_penalty, -1.0);
        for (args, needle) in [
            (vec![], "nothing to score"),
            (
                vec!["--rule", "contains:a", "--rule", "contains:b"],
                "column `contains`",
            ),
            (vec!["--rule", "contains:a,name=reward"], "column `reward`"),
            (vec!["--reward-model", "nowhere"], "needs --model"),
            (
                vec!["--rule", "gold", "--rm-std-penalty", "1"],
                "needs an ensemble",
            ),
        ] {
            let err = settings(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn ensemble_folders_expand_and_weights_default_to_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        let ens = dir.path().join("rm");
        for k in 0..3 {
            let m = ens.join(format!("member-{k}"));
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("adapter_config.json"), "{}").unwrap();
        }
        std::fs::write(
            ens.join("ensemble.json"),
            r#"{"members": ["member-0", "member-1", "member-2"], "resampling": "bootstrap"}"#,
        )
        .unwrap();
        let members = expand_ensemble(&ens).unwrap();
        assert_eq!(members.len(), 3);
        assert!(members[2].ends_with("member-2"));
        let model = dir.path().join("base");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
        let s = settings(&[
            "--reward-model",
            ens.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
        .unwrap();
        let cols: Vec<_> = s
            .reward_models
            .iter()
            .map(|m| (m.column.as_str(), m.weight))
            .collect();
        assert_eq!(
            cols,
            [
                ("rm_0", 1.0 / 3.0),
                ("rm_1", 1.0 / 3.0),
                ("rm_2", 1.0 / 3.0)
            ]
        );
    }
}
