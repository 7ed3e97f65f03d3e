//! One iteration end to end: read and join the inputs, load the frozen base with the policy
//! (and critic) adapters and their saved state (or, with --full, the policy and a frozen
//! reference copy), prepare advantages, update, and write the next adapter folder (or full
//! model folder) atomically with its training state and metrics.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rlhf_algo::optim::{AdamW, AdamWConfig};
use rlhf_algo::step_loop::StepLoop;
use rlhf_core::atomic::AtomicDir;
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::{MetricsLog, TRAINABLE_PARAMS, TRAINED_STATE_BYTES};
use rlhf_core::schema::Artifact;
use rlhf_nn::Model;

use crate::args::KlControlOn;
use crate::data::{self, Data};
use crate::models::{self, save_full_policy, Loaded};
use crate::prepare::{prepare, updated_kl, Prepared, SamplerCheck, SamplerMismatch, CRITIC};
use crate::settings::Settings;
use crate::state::{
    TrainingState, CRITIC_DIR, CRITIC_OPTIMIZER_FILE, METRICS_FILE, OPTIMIZER_FILE, STATE_VERSION,
};
use crate::update::{first_micro_batch, schedule_minibatches, Optimizers, Update};

/// Name of this stage in metrics and lineage.
pub const STAGE: &str = "ppo-update";

/// What a finished iteration reports (also printed as JSON on stdout).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub out: String,
    pub algo: String,
    pub iteration: i32,
    pub rollouts: usize,
    pub optimizer_steps: u64,
    pub kl_coef: f64,
    pub next_kl_coef: f64,
    pub score_mean: f64,
    pub kl_ref: f64,
    pub seconds: f64,
    /// Peak resident memory of the process (Linux VmHWM), as the other stages report it.
    pub peak_rss_bytes: Option<u64>,
}

fn check_tokens(model: &Model, data: &Data, s: &Settings) -> Result<()> {
    let vocab = model.config().vocab_size;
    for (row, e) in data.examples.iter().enumerate() {
        if let Some(&t) = e
            .prompt_tokens
            .iter()
            .chain(&e.response_tokens)
            .find(|&&t| t < 0 || t as i64 >= vocab)
        {
            return Err(rlhf_core::CoreError::BadInput {
                path: s.rollouts.clone(),
                row: Some(row),
                message: format!(
                    "rollout `{}` has token id {t}, outside the model's vocabulary of {vocab}\n  hint: were the rollouts sampled from another model?",
                    e.rollout_id
                ),
            }
            .into());
        }
    }
    let tok_dir = &s.model_dir;
    if tok_dir.join("tokenizer.json").is_file() {
        let tok = rlhf_core::tokenizer::Tokenizer::from_dir(tok_dir)?;
        Lineage::check_tokenizer(
            &s.rollouts.display().to_string(),
            data.tokenizer_hash.as_deref(),
            &tok_dir.display().to_string(),
            tok.hash(),
        )?;
    }
    Ok(())
}

fn load_optimizer(opt: &mut AdamW, dir: Option<&Path>, file: &str, s: &Settings) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let path = dir.join(file);
    if s.reset_optimizer || !path.is_file() {
        return Ok(());
    }
    let state = rlhf_algo::checkpoint::read_tensors(&path)?;
    opt.load_state(&state)
        .with_context(|| format!("loading optimiser state {}", path.display()))?;
    Ok(())
}

pub use rlhf_core::resources::peak_rss_bytes;

/// Runs one iteration and writes `s.out`.
pub fn run(s: &Settings) -> Result<Summary> {
    let started = Instant::now();
    let data = data::load(&s.rollouts, &s.scores, &s.reward_column)?;
    let iteration = s.iteration.unwrap_or(data.iteration);
    tracing::info!(
        rollouts = data.examples.len(),
        iteration,
        algo = s.algo.name(),
        full = s.full,
        "inputs joined"
    );
    let Loaded {
        mut models,
        prev_state,
        critic_dir,
        base_id,
        ref_id,
        sampled_by_this_policy,
    } = models::load(s, &data)?;
    check_tokens(&models.policy, &data, s)?;

    // KL controller: carried over when the flags describe the same controller
    let mut kl = match &prev_state {
        Some(st) if st.kl_controller.same_settings(&s.kl) => st.kl_controller.clone(),
        Some(st) => {
            tracing::warn!(previous = ?st.kl_controller, now = ?s.kl, "KL controller settings changed: starting from the flags");
            s.kl.clone()
        }
        None => s.kl.clone(),
    };
    let beta = kl.value();

    let mut opt = Optimizers {
        policy: AdamW::new(models.policy_parameters()?, s.adamw),
        critic: if s.algo.has_critic() {
            Some(AdamW::new(
                models.critic_parameters()?,
                AdamWConfig {
                    lr: s.critic_lr,
                    ..s.adamw
                },
            ))
        } else {
            None
        },
    };
    if prev_state.is_some() {
        load_optimizer(&mut opt.policy, s.state_dir(), OPTIMIZER_FILE, s)?;
        if let Some(c) = opt.critic.as_mut() {
            if critic_dir.is_some() && s.critic.is_none() {
                load_optimizer(c, s.state_dir(), CRITIC_OPTIMIZER_FILE, s)?;
            }
        }
    }
    let policy_numel = opt.policy.numel();
    let policy_state_bytes = opt.policy.trained_state_bytes();
    let critic_numel = opt.critic.as_ref().map(AdamW::numel);
    let base_step = prev_state
        .as_ref()
        .map(|st| st.optimizer_steps)
        .unwrap_or(0);

    // inputs fingerprint for resume: settings + input content
    let mut lineage = Lineage::new(STAGE, env!("CARGO_PKG_VERSION"), Artifact::Metrics);
    for f in &data.rollout_files {
        lineage.add_input("rollouts", f)?;
    }
    for f in &data.score_files {
        lineage.add_input("scores", f)?;
    }
    if let Some(dir) = &s.adapter {
        lineage.add_input("adapter", dir)?;
    }
    if s.full {
        // the policy's weights and the state beside them (optimiser, critic, KL controller)
        lineage.add_input("policy", &s.model_dir)?;
    }
    lineage
        .extra
        .insert("base_id".into(), serde_json::json!(base_id));
    if let Some(id) = &ref_id {
        lineage.extra.insert("ref_id".into(), serde_json::json!(id));
        lineage
            .extra
            .insert("tuning".into(), serde_json::json!("full"));
    }
    let input_hashes: Vec<String> = lineage.inputs.iter().map(|i| i.blake3.clone()).collect();
    let fingerprint = serde_json::json!({
        "settings": s.fingerprint(),
        "inputs": input_hashes,
        "base_id": base_id,
        "ref_id": ref_id,
    });

    let minibatches = schedule_minibatches(&data.examples, s, iteration);
    // The sampler's log-probs are checked in the update's first forward, where nothing then
    // computes them twice; under LoRA dropout (the training forward draws it) a separate
    // forward of a few rows instead; when a checkpoint may be resumed (its steps are done)
    // the first forward's check is replayed here, giving the uninterrupted run's metrics.
    let dropout = match models.policy_adapter() {
        Some(name) => models.policy.adapter_config(name)?.dropout > 0.0,
        None => false,
    };
    let check = if dropout {
        SamplerCheck::Now
    } else if s.checkpoint_dir().exists() {
        SamplerCheck::Replay(first_micro_batch(
            &minibatches,
            &data.examples,
            s.micro_batch_size,
        ))
    } else {
        SamplerCheck::FirstForward
    };
    let mut prep = prepare(
        &models,
        &data.examples,
        s,
        beta,
        sampled_by_this_policy,
        &check,
    )?;
    let steps_loop = StepLoop {
        stage: STAGE,
        iteration,
        label: "updating policy",
        dir: s.checkpoint_dir(),
        out: &s.out,
        args: &s.checkpoint,
        seed: s.seed,
        fingerprint,
        total_steps: minibatches.len() as u64,
        offset: base_step,
        micro_batches_per_step: 1,
        eval_every: 0,
        schedule: &s.schedule,
    };
    let mut update_with = |prep: &Prepared| {
        let mut update = Update {
            models: &models,
            examples: &data.examples,
            prep,
            s,
            opt: &mut opt,
            minibatches: minibatches.clone(),
            base_step,
            beta,
            checked: None,
        };
        let finished = steps_loop.run(&mut update, MetricsLog::new(STAGE, iteration))?;
        anyhow::Ok((finished, update.checked))
    };
    let (mut finished, checked) = match update_with(&prep) {
        Err(e) if e.downcast_ref::<SamplerMismatch>().is_some() => {
            tracing::info!(
                "{}: recomputing every row's old log-probs and starting the update over",
                e.downcast_ref::<SamplerMismatch>()
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            );
            prep = prepare(
                &models,
                &data.examples,
                s,
                beta,
                sampled_by_this_policy,
                &SamplerCheck::Off,
            )?;
            update_with(&prep)?
        }
        other => other?,
    };
    let check_metrics = checked.or_else(|| prep.check_metrics.take());
    prep.metrics.extend(check_metrics.unwrap_or_default());
    let mut metrics = finished.metrics;
    let steps = finished.steps;
    let end_step = (base_step + steps) as i64;

    // iteration-level metrics, recorded at the iteration's last step
    let kl_input = match s.kl_control_on {
        KlControlOn::Rollouts => prep.kl_seq_mean,
        KlControlOn::Updated => {
            let kl = updated_kl(&models, &data.examples, &prep, s)?;
            metrics.push(end_step, "iter/kl_updated", kl);
            kl
        }
    };
    let next_beta = kl.update(kl_input, data.examples.len() as u64);
    let m = &mut metrics;
    for (name, v) in &prep.metrics {
        m.push(end_step, &format!("iter/{name}"), *v);
    }
    for (name, v) in &data.score_means {
        m.push(end_step, &format!("iter/score/{name}_mean"), *v);
    }
    m.push(end_step, "iter/next_kl_coef", next_beta);
    if let Some(t) = kl.target() {
        m.push(end_step, "iter/kl_target", t);
    }
    m.push(end_step, "iter/optimizer_steps", steps as f64);
    if s.kl_max.is_some() {
        // the steps --kl-max skipped (their rows survive a resume with the checkpoint's metrics)
        let skipped = m
            .rows
            .iter()
            .filter(|r| r.metric == crate::update::KL_SKIPPED)
            .count();
        m.push(end_step, "iter/kl_max_skipped_steps", skipped as f64);
        if skipped > 0 {
            tracing::info!(
                skipped,
                steps,
                kl_max = s.kl_max,
                "--kl-max skipped optimiser steps: the policy reached the KL limit"
            );
        }
    }
    m.push(end_step, TRAINABLE_PARAMS, policy_numel as f64);
    m.push(end_step, TRAINED_STATE_BYTES, policy_state_bytes as f64);
    if let Some(n) = critic_numel {
        m.push(end_step, "run/critic_trainable_params", n as f64);
    }
    if s.record_timings {
        if let Some(rss) = peak_rss_bytes() {
            m.push(end_step, "run/peak_rss_bytes", rss as f64);
        }
    }
    finished.live.update(&metrics, true);

    let out = AtomicDir::new(&s.out)?;
    // the id the next iteration checks: the frozen base (LoRA), or the trained weights
    let out_base_id = if s.full {
        models.policy.set_base_trainable(false); // also drops the cached id of the old weights
        models.policy.base_id()
    } else {
        base_id.clone()
    };
    match models.policy_adapter() {
        Some(name) => models.policy.save_adapter(name, out.path())?,
        None => save_full_policy(&models.policy, &s.model_dir, out.path())?,
    }
    rlhf_algo::checkpoint::write_named(&out.path().join(OPTIMIZER_FILE), &opt.policy.state())?;
    if let Some(c) = &opt.critic {
        models
            .critic_model()
            .save_adapter(CRITIC, &out.path().join(CRITIC_DIR))?;
        rlhf_algo::checkpoint::write_named(&out.path().join(CRITIC_OPTIMIZER_FILE), &c.state())?;
    }
    let rollouts_seen =
        prev_state.as_ref().map(|p| p.rollouts_seen).unwrap_or(0) + data.examples.len() as u64;
    TrainingState {
        format_version: STATE_VERSION,
        producer: STAGE.into(),
        algo: s.algo,
        iteration,
        optimizer_steps: base_step + steps,
        rollouts_seen,
        kl_controller: kl.clone(),
        base_id: out_base_id,
        full: s.full,
        ref_id,
        schedule: s.schedule,
        adamw: s.adamw,
    }
    .write(out.path())?;
    metrics.write(&out.path().join(METRICS_FILE), &lineage)?;
    rlhf_core::config::write_resolved(out.path())?;
    out.commit()?;
    rlhf_algo::step_loop::remove_checkpoint(&s.checkpoint_dir(), &s.checkpoint)?;
    let metric = |name: &str| {
        prep.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or(f64::NAN)
    };
    Ok(Summary {
        out: s.out.display().to_string(),
        algo: s.algo.name().into(),
        iteration,
        rollouts: data.examples.len(),
        optimizer_steps: steps,
        kl_coef: beta,
        next_kl_coef: next_beta,
        score_mean: metric("score_mean"),
        kl_ref: metric("kl_ref"),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}
