//! The sample-rollouts stage: validate flags, select and tokenize this shard's prompts,
//! load the base once (with the policy adapter on it) and --ref-model when given, sample
//! batch by batch while streaming rows to the output, and log what was produced.

use std::time::Instant;

use anyhow::{Context, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::live::Stream;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::generate::SamplingParams;
use rlhf_nn::Model;

use crate::eos;
use crate::output::{peak_rss_bytes, RolloutSink};
use crate::prompts::{self, Filter};
use crate::reference;
use crate::sampler::{plan_windows, SampleContext};
use crate::seeding;
use crate::settings::{Cli, Settings};

/// Name of the policy adapter inside the model.
const POLICY: &str = "policy";

/// Runs the stage.
pub fn run(cli: &Cli) -> Result<()> {
    let settings = Settings::from_cli(cli)?;
    rlhf_nn::init_threads(cli.global.threads);
    let tokenizer = Tokenizer::from_dir(&settings.model_dir)?;
    let filter = Filter {
        split: settings.split.as_deref(),
        max_prompts: settings.max_prompts,
        shard: Some(settings.shard),
    };
    let (jobs, selection) = prompts::load(&settings.prompts, &filter, &tokenizer)?;
    if let Some(h) = selection
        .file_tokenizer
        .as_deref()
        .filter(|h| *h != tokenizer.hash())
    {
        tracing::info!(
            "{} was tokenized with tokenizer {h}, the model's is {}: encoding the prompt text again",
            settings.prompts.display(),
            tokenizer.hash()
        );
    }
    tracing::info!(
        "{} prompts selected of {} rows ({} other split, {} beyond --max-prompts); shard {}/{} has {}",
        selection.selected,
        selection.rows_read,
        selection.other_split,
        selection.beyond_max,
        settings.shard.index,
        settings.shard.count,
        selection.in_shard
    );
    let policy_id = seeding::policy_id(settings.adapter.as_deref())?;
    if let Some(dir) = &settings.ref_model {
        reference::check_compatible(&settings.model_dir, &tokenizer, dir)?;
    }

    let mut model = Model::load(&settings.model_dir, settings.device, settings.kind)
        .with_context(|| format!("loading base model {}", settings.model_dir.display()))?;
    let ref_model = match &settings.ref_model {
        Some(dir) => Some(reference::load(dir, settings.device, settings.kind)?),
        None => None,
    };
    let max_positions = std::iter::once(&model)
        .chain(&ref_model)
        .map(|m| m.config().max_position_embeddings)
        .min()
        .unwrap_or_default();
    prompts::check_lengths(&jobs, settings.max_new_tokens, max_positions as usize)?;
    if let Some(dir) = &settings.adapter {
        rlhf_core::adapter_meta::check_trained_on(
            "--adapter",
            dir,
            &settings.model_dir,
            &model.base_id(),
        )?;
        model
            .load_adapter(POLICY, dir)
            .with_context(|| format!("loading policy adapter {}", dir.display()))?;
    }
    let eos_ids = eos::response_end_ids(
        &tokenizer,
        &settings.model_dir,
        &model.config().eos_token_ids,
    )?;
    if eos_ids.is_empty() {
        tracing::warn!("neither the tokenizer nor the model has an EOS token: every response runs to --max-new-tokens or a --stop string");
    } else {
        tracing::info!(
            ?eos_ids,
            "responses end at these tokens (the tokenizer's EOS and the model's eos_token_id)"
        );
    }
    let params = SamplingParams {
        max_new_tokens: settings.max_new_tokens,
        temperature: settings.temperature,
        top_k: settings.top_k,
        top_p: settings.top_p,
        eos_ids,
    };

    let mut lineage = Lineage::new(
        "sample-rollouts",
        env!("CARGO_PKG_VERSION"),
        Artifact::Rollouts,
    )
    .with_tokenizer(Some(tokenizer.hash().to_string()));
    lineage.add_input("prompts", &settings.prompts)?;
    lineage.add_input("model", &settings.model_dir)?;
    if let Some(dir) = &settings.adapter {
        lineage.add_input("adapter", dir)?;
    }
    if let Some(dir) = &settings.ref_model {
        lineage.add_input("ref_model", dir)?;
    }
    lineage.extra.insert(
        "sampling".into(),
        serde_json::json!({
            "samples_per_prompt": settings.samples_per_prompt,
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "top_p": settings.top_p,
            "stop": settings.stop,
            "iteration": settings.iteration,
            "seed": settings.seed,
            "ref_logprobs": settings.ref_logprobs,
        }),
    );
    lineage
        .extra
        .insert("policy_id".into(), serde_json::json!(policy_id));
    lineage
        .extra
        .insert("base_id".into(), serde_json::json!(model.base_id()));
    if let Some(r) = &ref_model {
        lineage
            .extra
            .insert("ref_base_id".into(), serde_json::json!(r.base_id()));
    }
    lineage.extra.insert(
        "prompts".into(),
        serde_json::json!({
            "selected": selection.selected,
            "in_shard": selection.in_shard,
            "shard": {"index": settings.shard.index, "count": settings.shard.count},
            "stored_tokens": selection.stored_tokens,
            "encoded": selection.encoded,
        }),
    );

    let ctx = SampleContext {
        model: &model,
        tokenizer: &tokenizer,
        adapter: settings.adapter.as_ref().map(|_| POLICY),
        params,
        stop: settings.stop.clone(),
        samples_per_prompt: settings.samples_per_prompt,
        batch_rows: settings.batch_rows,
        iteration: settings.iteration,
        seed: settings.seed,
        policy_id,
        ref_logprobs: settings.ref_logprobs,
        ref_model: ref_model.as_ref(),
    };
    let mut sink = RolloutSink::create(&settings.out_file, &lineage)?;
    let bar = rlhf_core::progress::bar(jobs.len() as u64, "sampling");
    let start = Instant::now();
    let windows = plan_windows(jobs.len(), settings.samples_per_prompt, settings.batch_rows);
    tracing::info!(
        windows = windows.len(),
        batch_rows = settings.batch_rows,
        batch_invariant = settings.batch_invariant,
        "whole prompts decoding together, refilled as rows finish"
    );
    let window_count = windows.len();
    // progress streamed with --live-metrics / --tensorboard, at step = rollouts written
    let mut progress = MetricsLog::new("sample-rollouts", settings.iteration);
    let mut live = Stream::start(&progress, &settings.out_file)?;
    for range in windows {
        let n = range.len() as u64;
        for rows in ctx.sample(&jobs[range])? {
            sink.push_prompt(rows)?;
        }
        bar.inc(n);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let done = sink.summary();
        let rate = done.response_tokens as f64 / secs;
        bar.set_prefix(format!("{rate:.0} tok/s"));
        if !live.is_active() {
            continue;
        }
        let step = done.rows as i64;
        progress.push(step, "sampling/rollouts", done.rows as f64);
        progress.push(
            step,
            "sampling/mean_response_tokens",
            done.mean_response_tokens(),
        );
        progress.push(step, "sampling/response_tokens_per_second", rate);
        live.update(&progress, false);
    }
    live.update(&progress, true);
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let summary = sink.finish()?;
    tracing::info!(
        "wrote {} rollouts ({} prompts x {}) to {} in {secs:.1}s: {:.0} response tokens/s, mean length {:.1}, finish {}",
        summary.rows,
        summary.prompts,
        settings.samples_per_prompt,
        settings.out_file.display(),
        summary.response_tokens as f64 / secs.max(1e-9),
        summary.mean_response_tokens(),
        serde_json::to_string(&summary.finish_reasons).unwrap_or_default()
    );
    let mut details = summary.to_json();
    if let Some(m) = details.as_object_mut() {
        m.insert("sampling_seconds".into(), serde_json::json!(secs));
        m.insert("windows".into(), serde_json::json!(window_count));
        m.insert("batch_rows".into(), serde_json::json!(settings.batch_rows));
        m.insert(
            "batch_invariant".into(),
            serde_json::json!(settings.batch_invariant),
        );
        m.insert(
            "response_tokens_per_second".into(),
            serde_json::json!(summary.response_tokens as f64 / secs.max(1e-9)),
        );
        m.insert("peak_rss_bytes".into(), serde_json::json!(peak_rss_bytes()));
    }
    if let Some(target) = &settings.summary_json {
        rlhf_core::summary::StageSummary::new("sample-rollouts", env!("CARGO_PKG_VERSION"))
            .output(&settings.out_file, Some(summary.rows as u64))
            .metric("rows", summary.rows as f64)
            .metric("mean_response_tokens", summary.mean_response_tokens())
            .metric(
                "response_tokens_per_second",
                summary.response_tokens as f64 / secs.max(1e-9),
            )
            .details(details)
            .write(target)?;
    }
    Ok(())
}
