//! `prep-data synthetic`: writes the embedded task (rlhf_core::synthetic) from a seed:
//! sft.parquet, corpus.parquet (the same rows plus a `text` column for tokenizer
//! training), prompts.parquet (train split) and eval_prompts.parquet (held out).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use clap::{Args, ValueEnum};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{write_batch, write_records};
use rlhf_core::records::{Record, SftRow};
use rlhf_core::schema::Artifact;
use rlhf_core::synthetic::{self, PromptStyle, SyntheticConfig};

use crate::error::PrepError;
use crate::reject::Summary;

/// How prompts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Style {
    /// The plain chat template: "User: ...\nAssistant:".
    Chat,
    /// The raw request text.
    Raw,
}

/// Flags of `prep-data synthetic` (the seed is the global --seed).
#[derive(Debug, Clone, Args)]
pub struct SyntheticArgs {
    /// Distinct prompts to draw (1 to 640); split train/eval by hash.
    #[arg(long, default_value_t = 512)]
    pub num_prompts: usize,
    /// Fraction of prompts held out in eval_prompts.parquet.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    /// Supervised examples per prompt (mixed sentiments).
    #[arg(long, default_value_t = 8)]
    pub completions_per_prompt: usize,
    /// How prompts are written.
    #[arg(long, value_enum, default_value_t = Style::Chat)]
    pub prompt_style: Style,
    /// Output folder.
    #[arg(long)]
    pub out_dir: PathBuf,
}

fn corpus_batch(rows: &[SftRow]) -> anyhow::Result<RecordBatch> {
    let base = SftRow::to_batch(rows)?;
    let mut fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("text", DataType::Utf8, true));
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    cols.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| format!("{}{}", r.prompt, r.completion)),
    )));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// Generates and writes the task.
pub fn run(args: &SyntheticArgs, seed: u64) -> anyhow::Result<Summary> {
    if args.completions_per_prompt == 0 {
        return Err(PrepError::Flag("--completions-per-prompt must be at least 1".into()).into());
    }
    let cfg = SyntheticConfig {
        seed,
        num_prompts: args.num_prompts,
        eval_fraction: args.eval_fraction,
        completions_per_prompt: args.completions_per_prompt,
        prompt_style: match args.prompt_style {
            Style::Chat => PromptStyle::Chat,
            Style::Raw => PromptStyle::Raw,
        },
    };
    let data = synthetic::generate(&cfg).map_err(|e| PrepError::Flag(e.to_string()))?;
    let gold: Vec<f32> = data
        .sft
        .iter()
        .map(|r| synthetic::gold_score(&r.prompt, &r.completion))
        .collect();
    let mean = gold.iter().sum::<f32>() / gold.len().max(1) as f32;
    let std =
        (gold.iter().map(|g| (g - mean).powi(2)).sum::<f32>() / gold.len().max(1) as f32).sqrt();
    let mut lineage = Lineage::new("prep-data", env!("CARGO_PKG_VERSION"), Artifact::Sft);
    lineage.extra.insert("synthetic_seed".into(), seed.into());
    lineage
        .extra
        .insert("sft_gold_mean".into(), serde_json::json!(mean));
    lineage
        .extra
        .insert("sft_gold_std".into(), serde_json::json!(std));
    let dir = &args.out_dir;
    let mut summary = Summary::default();
    let mut put = |name: &str, n: usize| {
        summary.written.insert(name.to_string(), n as u64);
    };
    put(
        "sft.parquet",
        write_records(&dir.join("sft.parquet"), &data.sft, &lineage)?,
    );
    put(
        "corpus.parquet",
        write_batch(
            &dir.join("corpus.parquet"),
            Artifact::Sft,
            &corpus_batch(&data.sft)?,
            &lineage,
        )?,
    );
    let pl = lineage.for_artifact(Artifact::Prompts);
    put(
        "prompts.parquet",
        write_records(&dir.join("prompts.parquet"), &data.prompts, &pl)?,
    );
    put(
        "eval_prompts.parquet",
        write_records(&dir.join("eval_prompts.parquet"), &data.eval_prompts, &pl)?,
    );
    tracing::info!(
        "synthetic task: {} train prompts, {} eval prompts, {} sft examples (gold mean {mean:.2}, std {std:.2})",
        data.prompts.len(),
        data.eval_prompts.len(),
        data.sft.len()
    );
    Ok(summary)
}
