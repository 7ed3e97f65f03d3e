//! The score-rewards stage: stream the rollouts group by group, evaluate every reward
//! source, combine them, and write the scores with reward statistics in the lineage.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::live::Stream;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{RolloutRow, ScoresTable};
use rlhf_core::resources::peak_rss_bytes;
use rlhf_core::schema::Artifact;
use rlhf_core::CoreError;

use crate::combine::{response_length, CombineSpec, ENDED};
use crate::groups::{Group, GroupReader};
use crate::rules::{References, RowView, RuleKind};
use crate::settings::{rm_columns, Cli, Settings};
use crate::stats::{column_stats, ColumnStats};
use crate::text_input::TextInput;

/// A run's reward models, loaded by a [`RewardModelBackend`].
pub trait RewardModels {
    /// Normalised scores of `rows`: `[member][row]`; `source` names the rollouts in errors.
    fn score(&mut self, rows: &[&RolloutRow], source: &Path) -> Result<Vec<Vec<f32>>>;
    /// The reward models' tokenizer hash when they share one (recorded in the scores'
    /// lineage).
    fn tokenizer_hash(&self) -> Option<&str>;
    /// For each reward model that encodes the rollout text itself (--retokenize), its
    /// column and the number of rollouts it encoded each way, in column order.
    fn text_inputs(&self) -> Vec<(&str, &BTreeMap<TextInput, usize>)>;
}

/// Where reward models come from: the `score-rewards-rm` binary, which links libtorch. This
/// library and the `score-rewards` binary do not, so that a run with rule rewards only starts
/// without loading libtorch; `score-rewards` hands a run with `--reward-model` to
/// `score-rewards-rm`.
pub trait RewardModelBackend {
    /// Loads the reward models of `settings`; `rollouts_name` and `rollouts_tokenizer`
    /// describe the rollouts for error messages.
    fn load(
        &self,
        settings: &Settings,
        rollouts_name: &str,
        rollouts_tokenizer: Option<&str>,
    ) -> Result<Box<dyn RewardModels>>;
    /// Whether several prompts go into one forward batch whatever --pack-prompts says (on
    /// CUDA).
    fn packs_prompts(&self) -> bool;
}

/// Number of rows of a dataset, from the Parquet footers (for the progress bar).
fn count_rows(ds: &Dataset) -> u64 {
    ds.files
        .iter()
        .filter_map(|f| {
            let file = std::fs::File::open(f).ok()?;
            let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .ok()?;
            Some(b.metadata().file_metadata().num_rows().max(0) as u64)
        })
        .sum()
}

/// Everything the scoring loop needs.
struct Scorer<'a> {
    settings: &'a Settings,
    spec: CombineSpec,
    refs: Vec<Option<References>>,
    rms: Option<Box<dyn RewardModels>>,
    table: ScoresTable,
    lengths: Vec<usize>,
    finish: BTreeMap<String, usize>,
    /// Reward-model forward batches run (whole prompts each; several with --pack-prompts).
    batches: usize,
}

impl Scorer<'_> {
    /// Scores a batch of whole groups (one reward-model forward batch).
    /// Records the rows scored since the last call and the running mean reward, and
    /// streams them (nothing when no stream is open).
    fn stream_progress(&self, progress: &mut Option<Progress>, finish: bool) {
        let Some(p) = progress.as_mut().filter(|p| p.live.is_active()) else {
            return;
        };
        let rewards = &self.table.reward;
        let rows = rewards.len();
        if rows > p.summed {
            p.reward_sum += rewards[p.summed..]
                .iter()
                .map(|&r| f64::from(r))
                .sum::<f64>();
            p.summed = rows;
            let secs = p.start.elapsed().as_secs_f64().max(1e-9);
            let step = rows as i64;
            p.log.push(step, "scoring/rows", rows as f64);
            p.log
                .push(step, "scoring/reward_mean", p.reward_sum / rows as f64);
            p.log
                .push(step, "scoring/rows_per_second", rows as f64 / secs);
        }
        p.live.update(&p.log, finish);
    }

    fn flush(&mut self, groups: &mut Vec<Group>) -> Result<()> {
        let rows: Vec<&RolloutRow> = groups.iter().flat_map(|g| g.rows.iter()).collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.batches += 1;
        let rm: Vec<Vec<f32>> = match &mut self.rms {
            Some(m) => m.score(&rows, &self.settings.rollouts)?,
            None => Vec::new(),
        };
        for (i, row) in rows.iter().enumerate() {
            let len = response_length(row);
            let view = RowView {
                prompt_id: &row.prompt_id,
                prompt: &row.prompt,
                response: &row.response,
                response_tokens: len,
            };
            let rule_values = self
                .settings
                .rules
                .iter()
                .zip(&self.refs)
                .map(|(rule, refs)| {
                    rule.value(&view, refs.as_ref()).with_context(|| {
                        format!("rule `{}` on rollout `{}`", rule.name, row.rollout_id)
                    })
                })
                .collect::<Result<Vec<f32>>>()?;
            let rm_values: Vec<f32> = rm.iter().map(|member| member[i]).collect();
            if let Some(bad) = rm_values
                .iter()
                .chain(&rule_values)
                .find(|v| !v.is_finite())
            {
                anyhow::bail!("rollout `{}`: a reward source gave {bad}", row.rollout_id);
            }
            self.spec
                .push(&mut self.table, row, &rm_values, &rule_values);
            if let Some(r) = self.table.reward.last().filter(|r| !r.is_finite()) {
                // finite sources times the flags' weights: a usage error (exit 2)
                anyhow::bail!(CoreError::usage(format!(
                    "rollout `{}`: the weighted reward is {r} (finite sources {:?} times their \
                     weights overflow f32)\n  hint: lower the reward-model (DIR:W) or rule weights",
                    row.rollout_id,
                    rm_values.iter().chain(&rule_values).collect::<Vec<_>>()
                )));
            }
            self.lengths.push(len);
            *self.finish.entry(row.finish_reason.clone()).or_default() += 1;
        }
        groups.clear();
        Ok(())
    }
}

/// Scoring progress streamed with `--live-metrics` / `--tensorboard`.
struct Progress {
    log: MetricsLog,
    live: Stream,
    start: std::time::Instant,
    /// Sum of the first `summed` rewards of the table (the running mean's numerator).
    reward_sum: f64,
    summed: usize,
}

/// Runs the stage; `backend` loads the reward models (None: rule rewards only, and a
/// `--reward-model` is an error).
pub fn run(cli: &Cli, backend: Option<&dyn RewardModelBackend>) -> Result<()> {
    let settings = Settings::from_cli(cli)?;
    let ds = Dataset::open(&settings.rollouts, Artifact::Rollouts)
        .with_context(|| format!("opening rollouts {}", settings.rollouts.display()))?;
    let rollouts_tokenizer = ds.tokenizer_hash()?;
    let rollouts_name = format!(
        "rollouts {} (lineage tokenizer_hash)",
        settings.rollouts.display()
    );

    let refs = settings
        .rules
        .iter()
        .map(|r| match &r.kind {
            RuleKind::Exact { prompts, column } => References::load(prompts, column).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let rms = if settings.reward_models.is_empty() {
        None
    } else {
        let backend = backend.context(
            "reward models are scored by score-rewards-rm, the binary that score-rewards hands \
             such runs to",
        )?;
        Some(backend.load(&settings, &rollouts_name, rollouts_tokenizer.as_deref())?)
    };
    let spec = CombineSpec {
        rm: rm_columns(&settings.reward_models),
        rules: settings
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.weight))
            .collect(),
        eos_penalty: settings.eos_penalty,
        rm_std_penalty: settings.rm_std_penalty,
    };
    let mut lineage = Lineage::new("score-rewards", env!("CARGO_PKG_VERSION"), Artifact::Scores);
    lineage.add_input("rollouts", &settings.rollouts)?;
    if let Some(dir) = &settings.model_dir {
        lineage.add_input("model", dir)?;
    }
    for rm in &settings.reward_models {
        lineage.add_input(&format!("reward_model:{}", rm.column), &rm.dir)?;
    }
    for r in &settings.rules {
        if let RuleKind::Exact { prompts, .. } = &r.kind {
            lineage.add_input(&format!("references:{}", r.name), prompts)?;
        }
    }
    let tokenizer = rms
        .as_ref()
        .and_then(|m| m.tokenizer_hash())
        .map(String::from)
        .or(rollouts_tokenizer);
    let mut lineage = lineage.with_tokenizer(tokenizer);

    let mut scorer = Scorer {
        settings: &settings,
        table: spec.empty_table(),
        spec,
        refs,
        rms,
        lengths: Vec::new(),
        finish: BTreeMap::new(),
        batches: 0,
    };
    let pack = settings.pack_prompts || backend.is_some_and(|b| b.packs_prompts());
    let start = std::time::Instant::now();
    let bar = rlhf_core::progress::bar(count_rows(&ds), "scoring");
    let mut reader = GroupReader::new(&ds);
    let mut pending: Vec<Group> = Vec::new();
    let mut pending_rows = 0usize;
    // progress streamed with --live-metrics / --tensorboard, at step = rows scored; the
    // iteration is the rollouts' (known at the first group)
    let mut progress: Option<Progress> = None;
    while let Some(group) = reader.next_group()? {
        bar.inc(group.rows.len() as u64);
        if !settings.shard.owns(group.index) {
            continue;
        }
        if progress.is_none() {
            let log = MetricsLog::new("score-rewards", group.rows[0].iteration);
            let live = Stream::start(&log, &settings.out_file)?;
            progress = Some(Progress {
                log,
                live,
                start,
                reward_sum: 0.0,
                summed: 0,
            });
        }
        if pack && !pending.is_empty() && pending_rows + group.rows.len() > settings.batch_size {
            scorer.flush(&mut pending)?;
            pending_rows = 0;
            scorer.stream_progress(&mut progress, false);
        }
        pending_rows += group.rows.len();
        pending.push(group);
        if !pack {
            scorer.flush(&mut pending)?;
            pending_rows = 0;
            scorer.stream_progress(&mut progress, false);
        }
    }
    scorer.flush(&mut pending)?;
    scorer.stream_progress(&mut progress, true);
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();

    let (stats, summary) = summarise(&scorer, &settings);
    lineage.extra.extend(summary.clone());
    let rows = scorer.table.write(&settings.out_file, &lineage)?;
    let penalised = summary
        .get("eos_penalised_rows")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    report(
        &stats,
        scorer.rms.as_deref(),
        penalised,
        rows,
        &settings.out_file,
    );
    tracing::info!(
        "scored {rows} rollouts in {secs:.1}s ({:.1} sequences/s)",
        rows as f64 / secs.max(1e-9)
    );
    if let Some(target) = &settings.summary_json {
        // Timing goes to the summary only: the scores file stays byte-identical across runs.
        let mut details = summary;
        details.insert("scoring_seconds".into(), serde_json::json!(secs));
        details.insert("forward_batches".into(), serde_json::json!(scorer.batches));
        details.insert(
            "sequences_per_second".into(),
            serde_json::json!(rows as f64 / secs.max(1e-9)),
        );
        details.insert("peak_rss_bytes".into(), serde_json::json!(peak_rss_bytes()));
        let mut out =
            rlhf_core::summary::StageSummary::new("score-rewards", env!("CARGO_PKG_VERSION"))
                .output(&settings.out_file, Some(rows as u64))
                .metric("rows", rows as f64);
        for (name, st) in &stats {
            out = out.metric(&format!("{name}_mean"), st.mean);
        }
        out.details(details).write(target)?;
    }
    Ok(())
}

/// Reward statistics (also returned on their own for the log) and counts, for the lineage.
fn summarise(
    s: &Scorer,
    settings: &Settings,
) -> (
    BTreeMap<String, ColumnStats>,
    BTreeMap<String, serde_json::Value>,
) {
    let mut stats: BTreeMap<String, ColumnStats> = BTreeMap::new();
    let reward: Vec<Option<f32>> = s.table.reward.iter().map(|&r| Some(r)).collect();
    if let Some(st) = column_stats(&reward, &s.lengths) {
        stats.insert("reward".into(), st);
    }
    for (name, values) in &s.table.sources {
        if let Some(st) = column_stats(values, &s.lengths) {
            stats.insert(name.clone(), st);
        }
    }
    let penalised = s
        .finish
        .iter()
        .filter(|(k, _)| !ENDED.contains(&k.as_str()))
        .map(|(_, v)| *v)
        .sum::<usize>();
    let mut m = BTreeMap::new();
    m.insert("rows".into(), serde_json::json!(s.table.rollout_id.len()));
    m.insert(
        "reward_stats".into(),
        serde_json::to_value(&stats).unwrap_or_default(),
    );
    m.insert(
        "sources".into(),
        serde_json::json!(s
            .spec
            .rm
            .iter()
            .chain(&s.spec.rules)
            .map(|(c, w)| serde_json::json!({"column": c, "weight": w}))
            .collect::<Vec<_>>()),
    );
    m.insert("finish_reasons".into(), serde_json::json!(s.finish));
    m.insert(
        "eos_penalty".into(),
        serde_json::json!(settings.eos_penalty),
    );
    m.insert("eos_penalised_rows".into(), serde_json::json!(penalised));
    m.insert(
        "shard".into(),
        serde_json::json!({"index": settings.shard.index, "count": settings.shard.count}),
    );
    if let Some(rms) = &s.rms {
        m.extend(retokenized(rms.as_ref()));
    }
    (stats, m)
}

/// How the reward models that encoded the rollout text themselves (--retokenize) made their
/// inputs, by column: `retokenized` gives `chat_template` or `prompt_text` (`mixed` when the
/// rollouts went both ways), `retokenized_rows` the number of rollouts each way. Nothing
/// when every reward model scored the rollouts' own token ids.
fn retokenized(rms: &dyn RewardModels) -> BTreeMap<String, serde_json::Value> {
    let used = rms.text_inputs();
    if used.is_empty() {
        return BTreeMap::new();
    }
    let mut ways = serde_json::Map::new();
    let mut rows = serde_json::Map::new();
    for (column, counts) in used {
        let way = match counts.keys().collect::<Vec<_>>()[..] {
            [only] => only.name(),
            _ => "mixed",
        };
        ways.insert(column.into(), way.into());
        rows.insert(
            column.into(),
            counts
                .iter()
                .map(|(t, n)| (t.name().to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    BTreeMap::from([
        ("retokenized".to_string(), ways.into()),
        ("retokenized_rows".to_string(), rows.into()),
    ])
}

fn report(
    stats: &BTreeMap<String, ColumnStats>,
    rms: Option<&dyn RewardModels>,
    penalised: u64,
    rows: usize,
    out: &Path,
) {
    tracing::info!("wrote {rows} scores to {}", out.display());
    for (column, counts) in rms.map(|r| r.text_inputs()).unwrap_or_default() {
        let parts: Vec<String> = counts
            .iter()
            .map(|(t, n)| format!("{n} rollouts {}", t.describe()))
            .collect();
        tracing::info!(
            "reward model `{column}` (--retokenize): {}",
            parts.join(", ")
        );
    }
    for (name, st) in stats {
        tracing::info!("{}", st.line(name));
    }
    if penalised > 0 {
        tracing::info!(
            "{penalised} of {rows} responses did not end by themselves (finish_reason length)"
        );
    }
}
