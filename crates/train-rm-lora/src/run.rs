//! The stage: validated settings from the command line, data loading, one training run
//! per ensemble member on the one shared base, normalisation, and the atomic output folder
//! (PEFT files, rlhf_state.json, metrics.parquet, lineage.json; ensemble.json and
//! member-k/ folders with --ensemble N).

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_algo::checkpoint::ResumeMode;
use rlhf_core::atomic::AtomicDir;
use rlhf_core::error::CoreError;
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::Model;
use serde_json::json;
use tracing::info;

use crate::args::Cli;
use crate::batching::{bootstrap, groups};
use crate::data::{self, Encoder, TrainData};
use crate::loss::LossConfig;
use crate::reward_model::{RewardModel, Tuning};
use crate::state::{self, EnsembleIndex, Reference, RewardState, STATE_VERSION};
use crate::train::{train_member, Job, TrainConfig};

/// Stage name in metrics and lineage.
pub const STAGE: &str = "train-rm-lora";

/// Checks what can be checked before loading anything heavy.
fn precheck(cli: &Cli) -> Result<()> {
    cli.train.checkpoint.validate()?;
    cli.train.lora.validate()?;
    cli.train.optim.validate()?;
    let mut inputs = vec![("--model", cli.model.model.as_path())];
    for (flag, p) in [
        ("--preferences", &cli.preferences),
        ("--ratings", &cli.ratings),
        ("--normalize-with", &cli.normalize_with),
    ] {
        if let Some(p) = p {
            inputs.push((flag, p.as_path()));
        }
    }
    rlhf_core::paths::check_outputs(&[("--out", &cli.out)], &inputs)?;
    if !cli.model.model.join("config.json").is_file() {
        return Err(CoreError::BadInput {
            path: cli.model.model.clone(),
            row: None,
            message: "not a model folder: config.json is missing".into(),
        }
        .into());
    }
    for (flag, p) in [
        ("--preferences", &cli.preferences),
        ("--ratings", &cli.ratings),
        ("--normalize-with", &cli.normalize_with),
    ] {
        if let Some(p) = p {
            rlhf_core::parquet_io::resolve_inputs(p)
                .with_context(|| format!("{flag} {}", p.display()))?;
        }
    }
    if let Some(parent) = cli.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of --out {}", cli.out.display()))?;
    }
    Ok(())
}

fn train_config(cli: &Cli) -> TrainConfig {
    TrainConfig {
        epochs: cli.epochs,
        max_steps: cli.max_steps,
        batch_size: cli.batch_size,
        grad_accum: cli.grad_accum,
        adamw: cli.train.optim.adamw(),
        schedule: cli.train.optim.lr_schedule,
        final_lr_fraction: cli.train.optim.final_lr_fraction,
        warmup_steps: cli.train.optim.warmup_steps as usize,
        max_grad_norm: cli.train.optim.max_grad_norm,
        eval_every: cli.eval_every,
        record_timings: cli.record_timings,
        seed: cli.global.seed,
        loss: LossConfig {
            label_smoothing: cli.label_smoothing,
            noise_robust: cli.noise_robust,
            margin_scale: cli.margin,
            center_coef: cli.center_coef,
        },
        ratings_weight: cli.ratings_weight,
    }
}

/// The fingerprint of a finished ensemble member kept for a resumed run.
const DONE_FINGERPRINT: &str = "fingerprint.json";

/// True when the finished member in `done_dir` was trained with this run's inputs and
/// flags; otherwise a mismatch, handled as `mode` says (retrain, or refuse under --resume).
fn done_matches(done_dir: &Path, want: &serde_json::Value, mode: ResumeMode) -> Result<bool> {
    let path = done_dir.join(DONE_FINGERPRINT);
    let found: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if found.as_ref() == Some(want) {
        return Ok(true);
    }
    mode.on_mismatch(anyhow::Error::new(CoreError::Mismatch {
        what: "finished ensemble member",
        left_name: done_dir.display().to_string(),
        left: found.map_or("no fingerprint".into(), |f| f.to_string()),
        right_name: "this run".into(),
        right: want.to_string(),
        hint: "rerun with the original flags and inputs, or --no-resume to start over".into(),
    }))?;
    Ok(false)
}

/// Everything that must be equal for a checkpoint to be resumed.
fn fingerprint(cli: &Cli, lineage: &Lineage, member: usize) -> serde_json::Value {
    json!({
        "inputs": lineage.inputs.iter().map(|i| json!([i.role, i.blake3])).collect::<Vec<_>>(),
        "member": member,
        "seed": cli.global.seed,
        "full": cli.full,
        // the resolved values: `--lora-rank 8` and no flag are the same adapter
        "lora": cli.train.lora.resolve().ok(),
        "optim": format!("{:?}", cli.train.optim),
        "steps": [cli.epochs, cli.max_steps, cli.batch_size, cli.grad_accum],
        "eval_every": cli.eval_every,
        "device": cli.model.device,
        "data": [cli.max_seq_len, format!("{:?}", cli.group_weighting), cli.ensemble],
        "loss": [cli.label_smoothing, cli.noise_robust, cli.margin, cli.center_coef, cli.ratings_weight],
        "dtype": format!("{:?}", cli.model.dtype),
    })
}

/// Copies the regular files of `from` into `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let dst = to.join(entry.file_name());
            std::fs::copy(entry.path(), &dst).with_context(|| {
                format!("copying {} to {}", entry.path().display(), dst.display())
            })?;
        }
    }
    Ok(())
}

/// Runs the stage.
pub fn run(cli: &Cli) -> Result<()> {
    // before any input is read: a device this machine cannot use is a usage error
    let device = cli.model.device()?;
    precheck(cli)?;
    rlhf_nn::init_threads(cli.global.threads);
    let model_dir = &cli.model.model;
    let tokenizer = Tokenizer::from_dir(model_dir)
        .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))?;
    let mut enc = Encoder {
        tokenizer: &tokenizer,
        max_seq_len: cli.max_seq_len,
        truncated: 0,
    };
    let mut lineage = Lineage::new(STAGE, env!("CARGO_PKG_VERSION"), Artifact::Metrics)
        .with_tokenizer(Some(tokenizer.hash().to_string()));
    lineage.add_input("model", model_dir)?;
    let mut data = TrainData::default();
    if let Some(p) = &cli.preferences {
        let n = data::load_preferences(p, &mut enc, model_dir, &mut data)?;
        info!(rows = n, file = %p.display(), "preferences");
        for f in rlhf_core::parquet_io::resolve_inputs(p)? {
            lineage.add_input("preferences", &f)?;
        }
    }
    if let Some(p) = &cli.ratings {
        let n = data::load_ratings(p, &mut enc, model_dir, &mut data)?;
        info!(rows = n, file = %p.display(), "ratings");
        for f in rlhf_core::parquet_io::resolve_inputs(p)? {
            lineage.add_input("ratings", &f)?;
        }
    }
    data.train.apply_group_weighting(cli.group_weighting);
    data.eval.apply_group_weighting(cli.group_weighting);
    if data.train.is_empty() {
        return Err(CoreError::BadInput {
            path: cli
                .preferences
                .clone()
                .or(cli.ratings.clone())
                .unwrap_or_default(),
            row: None,
            message: "no training rows: every row has split=eval (or the file is empty)".into(),
        }
        .into());
    }
    let (reference, ref_source) = match &cli.normalize_with {
        Some(p) => {
            let seqs = data::load_reference(p, &mut enc, model_dir)?;
            lineage.add_input("normalize-with", p)?;
            (seqs, format!("file {}", p.display()))
        }
        None => {
            let (seqs, what) = data::default_reference(&data);
            (seqs, what.to_string())
        }
    };
    data.truncated = enc.truncated;
    if data.truncated > 0 {
        tracing::warn!(
            sequences = data.truncated,
            max_seq_len = cli.max_seq_len,
            "sequences truncated"
        );
    }
    info!(
        train_pairs = data.train.pairs.len(),
        train_ratings = data.train.ratings.len(),
        eval_pairs = data.eval.pairs.len(),
        eval_ratings = data.eval.ratings.len(),
        sequences = data.train.seqs.len() + data.eval.seqs.len(),
        "data"
    );

    let mut model = Model::load(model_dir, device, cli.model.kind())
        .with_context(|| format!("loading the base model {}", model_dir.display()))?;
    model.set_base_name(Some(model_dir.display().to_string()));
    let base_id = model.base_id();
    let arch = model.config().arch;
    let lora = cli.train.lora.config(arch)?;
    let tuning = if cli.full {
        Tuning::Full(lora)
    } else {
        Tuning::Lora(lora)
    };
    let cfg = train_config(cli);
    let pad_id = tokenizer.pad_id as i64;
    let ck_root = rlhf_algo::step_loop::checkpoint_dir_for(&cli.out);
    let out = AtomicDir::new(&cli.out)?;
    let all_groups = groups(&data.train);
    let mut all_metrics = MetricsLog::new(STAGE, 0);
    let mut summary = Vec::new();
    for member in 0..cli.ensemble {
        let name = state::member_dir_name(member);
        let target = if cli.ensemble > 1 {
            out.path().join(&name)
        } else {
            out.path().to_path_buf()
        };
        let done_dir = ck_root.join(format!("{name}.done"));
        let member_fingerprint = fingerprint(cli, &lineage, member);
        let mode = cli.train.checkpoint.mode();
        if cli.ensemble > 1
            && mode.tries()
            && done_dir.join(state::STATE_FILE).is_file()
            && done_matches(&done_dir, &member_fingerprint, mode)?
        {
            info!(
                member,
                "member finished before the interruption; reusing it"
            );
            copy_files(&done_dir, &target)?;
            let log = MetricsLog::read(&done_dir.join("metrics.parquet"), STAGE, member as i32)?;
            all_metrics.rows.extend(log.rows);
            summary.push(json!({"member": member, "reused": true}));
            continue;
        }
        let rm = RewardModel::attach(
            &mut model,
            &name,
            tuning.clone(),
            pad_id,
            cli.global.seed.wrapping_add(member as u64),
        )?;
        let member_groups = if cli.ensemble > 1 {
            bootstrap(&all_groups, cli.global.seed, member)
        } else {
            all_groups.clone()
        };
        let job = Job {
            cfg: &cfg,
            train: &data.train,
            groups: member_groups,
            eval: &data.eval,
            checkpoint_dir: ck_root.join(&name),
            checkpoint: &cli.train.checkpoint,
            out: &cli.out,
            member,
            fingerprint: member_fingerprint.clone(),
        };
        let outcome = train_member(&rm, &job, member as i32)?;
        let raw = rm.score_all(&reference, cli.batch_size * 2)?;
        let (bias, scale, raw_mean, raw_std) = RewardState::constants(&raw, cli.normalize_scale);
        let st = RewardState {
            format_version: STATE_VERSION,
            kind: "reward_model".into(),
            reward_formula: "reward = (raw + reward_bias) * reward_scale".into(),
            reward_bias: bias,
            reward_scale: scale,
            base_id: base_id.clone(),
            tokenizer_hash: tokenizer.hash().to_string(),
            base_model: model_dir.display().to_string(),
            full: cli.full,
            steps: outcome.steps,
            member,
            ensemble_size: cli.ensemble,
            reference: Reference {
                source: ref_source.clone(),
                count: reference.len(),
                raw_mean,
                raw_std,
            },
            eval: outcome.eval.iter().cloned().collect(),
        };
        rm.save(&target, model_dir)?;
        rm.detach()?;
        st.write(&target)?;
        let mut member_lineage = lineage.clone();
        member_lineage.extra.insert("member".into(), json!(member));
        member_lineage
            .extra
            .insert("truncated_sequences".into(), json!(data.truncated));
        member_lineage.extra.insert("eval".into(), json!(st.eval));
        outcome
            .metrics
            .write(&target.join("metrics.parquet"), &member_lineage)?;
        rlhf_core::atomic::write_file(
            &target.join("lineage.json"),
            member_lineage.to_json().as_bytes(),
        )?;
        if cli.ensemble > 1 {
            let staging = AtomicDir::new(&done_dir)?;
            copy_files(&target, staging.path())?;
            std::fs::write(
                staging.path().join(DONE_FINGERPRINT),
                member_fingerprint.to_string(),
            )
            .with_context(|| format!("writing {}", done_dir.display()))?;
            staging.commit()?;
        }
        all_metrics.rows.extend(outcome.metrics.rows);
        summary.push(
            json!({"member": member, "steps": outcome.steps, "eval": st.eval,
                            "reward_bias": bias, "reward_scale": scale}),
        );
    }
    if cli.ensemble > 1 {
        let index = EnsembleIndex {
            members: (0..cli.ensemble).map(state::member_dir_name).collect(),
            resampling: "bootstrap of training groups (with replacement, same size), seeded by --seed and member index".into(),
        };
        rlhf_core::atomic::write_file(
            &out.path().join(state::ENSEMBLE_FILE),
            (serde_json::to_string_pretty(&index)? + "\n").as_bytes(),
        )?;
        all_metrics.write(&out.path().join("metrics.parquet"), &lineage)?;
        rlhf_core::atomic::write_file(
            &out.path().join("lineage.json"),
            lineage.to_json().as_bytes(),
        )?;
    }
    rlhf_core::config::write_resolved(out.path())?;
    let path = out.commit()?;
    rlhf_algo::step_loop::remove_checkpoint(&ck_root, &cli.train.checkpoint)?;
    info!(out = %path.display(), "reward model written");
    let mut out =
        rlhf_core::summary::StageSummary::new(STAGE, env!("CARGO_PKG_VERSION")).output(&path, None);
    if let Some(acc) = summary.first().and_then(|m| m["eval"]["accuracy"].as_f64()) {
        out = out.metric("eval_accuracy", acc);
    }
    cli.global
        .write_summary(out.details(json!({"members": summary})))?;
    Ok(())
}
