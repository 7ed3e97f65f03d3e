//! `prep-data convert`: raw feedback files in a known format -> prompts, eval_prompts,
//! preferences, ratings and sft Parquet files plus rejects.parquet, streamed row by row.

use std::path::PathBuf;

use clap::Args;
use rlhf_core::hash::{content_id, split_for};
use rlhf_core::lineage::Lineage;
use rlhf_core::records::{Message, PreferenceRow, PromptRow, RatingRow, SftRow};
use rlhf_core::schema::Artifact;
use rlhf_core::shard::{Shard, ShardArgs};
use serde_json::Value;

use crate::error::PrepError;
use crate::formats::{self, Example, Format, FormatOptions, GenericKind};
use crate::input::{self, RawRow};
use crate::output::{RejectSink, SeenIds, Sink};
use crate::reject::{Reason, Rejection, Summary};
use crate::render::{Renderer, TemplateMode};

/// Flags of `prep-data convert`.
#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// Input: a file, a folder (all .jsonl/.json/.csv/.tsv/.parquet files, optionally .gz/.zst),
    /// or a glob (quote it).
    #[arg(long)]
    pub input: String,
    /// Input format; auto detects it per file from the first row's columns.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Output folder: prompts.parquet (train split), eval_prompts.parquet, and
    /// preferences/ratings/sft.parquet when the input has such rows, plus rejects.parquet.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Fraction of prompts (by content hash) in the eval split; all rows of a prompt share it.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Model folder whose tokenizer.json (and chat template) to use: adds token columns and
    /// records the tokenizer hash.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// How prompts become text.
    #[arg(long, value_enum, default_value_t = TemplateMode::Auto)]
    pub chat_template: TemplateMode,
    /// Reject rows whose prompt has more tokens than this (needs --tokenizer).
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Reject rows with a response longer than this many tokens (needs --tokenizer).
    #[arg(long)]
    pub max_response_tokens: Option<usize>,
    /// Keep exact duplicates instead of rejecting them with reason `duplicate`.
    #[arg(long)]
    pub keep_duplicates: bool,
    /// Fail (exit 3) on the first rejected row instead of writing it to rejects.
    #[arg(long)]
    pub strict: bool,
    /// Value of the `source` column (default: the format name).
    #[arg(long)]
    pub source: Option<String>,
    /// SHP: reject pairs whose score ratio (preferred / other) is below this.
    #[arg(long)]
    pub min_score_ratio: Option<f64>,
    /// Generic format: what the rows are.
    #[arg(long, value_enum, default_value_t = GenericKind::Auto)]
    pub kind: GenericKind,
    /// Generic format: prompt column (text or message list).
    #[arg(long, default_value = "prompt")]
    pub prompt_column: String,
    /// Generic format: chosen response column.
    #[arg(long, default_value = "chosen")]
    pub chosen_column: String,
    /// Generic format: rejected response column.
    #[arg(long, default_value = "rejected")]
    pub rejected_column: String,
    /// Generic format: rated response column.
    #[arg(long, default_value = "response")]
    pub response_column: String,
    /// Generic format: rating column (1/0 or a scalar).
    #[arg(long, default_value = "rating")]
    pub rating_column: String,
    /// Generic format: SFT completion column.
    #[arg(long, default_value = "completion")]
    pub completion_column: String,
    /// Generic format: SFT messages column (a conversation ending with the reply).
    #[arg(long, default_value = "messages")]
    pub messages_column: String,
    /// Generic format: reference answer column of prompts.
    #[arg(long, default_value = "reference")]
    pub reference_column: String,
    /// Generic format: column with P(chosen preferred) (0.5 = tie; below 0.5 swaps the pair).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Generic format: column with the preference margin.
    #[arg(long)]
    pub margin_column: Option<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
}

impl ConvertArgs {
    fn options(&self) -> FormatOptions {
        FormatOptions {
            kind: self.kind,
            prompt_column: self.prompt_column.clone(),
            chosen_column: self.chosen_column.clone(),
            rejected_column: self.rejected_column.clone(),
            response_column: self.response_column.clone(),
            rating_column: self.rating_column.clone(),
            completion_column: self.completion_column.clone(),
            messages_column: self.messages_column.clone(),
            reference_column: self.reference_column.clone(),
            label_column: self.label_column.clone(),
            margin_column: self.margin_column.clone(),
            min_score_ratio: self.min_score_ratio,
        }
    }
}

/// All sinks of one conversion.
struct Outputs {
    prompts: Sink<PromptRow>,
    eval_prompts: Sink<PromptRow>,
    preferences: Sink<PreferenceRow>,
    ratings: Sink<RatingRow>,
    sft: Sink<SftRow>,
    rejects: RejectSink,
    seen: SeenIds,
    keep_duplicates: bool,
    eval_fraction: f64,
}

const KIND_PROMPT: u8 = 0;
const KIND_ROW: u8 = 1;

impl Outputs {
    /// Renders and writes one example; a problem is returned as a rejection.
    fn add(
        &mut self,
        ex: Example,
        r: &Renderer,
        source: &str,
    ) -> anyhow::Result<Result<(), Rejection>> {
        let built = match build(ex, r, source, self.eval_fraction) {
            Ok(b) => b,
            Err(rej) => return Ok(Err(rej)),
        };
        let (prompt_row, row) = built;
        let new_prompt = self.seen.insert(KIND_PROMPT, &prompt_row.prompt_id);
        match row {
            Some((id, row)) => {
                if !self.seen.insert(KIND_ROW, &id) && !self.keep_duplicates {
                    return Ok(Err(Rejection::new(
                        Reason::Duplicate,
                        format!("exact duplicate of an earlier example (id {id})"),
                    )));
                }
                match row {
                    Row::Pair(p) => self.preferences.push(p)?,
                    Row::Rating(p) => self.ratings.push(p)?,
                    Row::Sft(p) => self.sft.push(p)?,
                }
                if !new_prompt {
                    return Ok(Ok(()));
                }
            }
            None if !new_prompt && !self.keep_duplicates => {
                return Ok(Err(Rejection::new(
                    Reason::Duplicate,
                    format!(
                        "exact duplicate of an earlier prompt (id {})",
                        prompt_row.prompt_id
                    ),
                )));
            }
            None => {}
        }
        if prompt_row.split == "eval" {
            self.eval_prompts.push(prompt_row)?;
        } else {
            self.prompts.push(prompt_row)?;
        }
        Ok(Ok(()))
    }
}

enum Row {
    Pair(PreferenceRow),
    Rating(RatingRow),
    Sft(SftRow),
}

type Built = (PromptRow, Option<(String, Row)>);

fn build(ex: Example, r: &Renderer, source: &str, eval_fraction: f64) -> Result<Built, Rejection> {
    let msgs = match &ex {
        Example::Pair { prompt, .. }
        | Example::Rating { prompt, .. }
        | Example::Sft { prompt, .. }
        | Example::Prompt { prompt, .. } => prompt.clone(),
    };
    if msgs.iter().any(|m| m.content.trim().is_empty()) {
        return Err(Rejection::new(
            Reason::EmptyText,
            "a prompt message is empty",
        ));
    }
    let p = r.prompt(&msgs)?;
    let prompt_id = content_id(&[&p.text]);
    let split = split_for(&prompt_id, eval_fraction).to_string();
    let nonempty = |s: &str, what: &str| {
        if s.trim().is_empty() {
            Err(Rejection::new(
                Reason::EmptyText,
                format!("the {what} is empty"),
            ))
        } else {
            Ok(())
        }
    };
    let mut reference = None;
    let row = match ex {
        Example::Pair {
            chosen,
            rejected,
            label,
            margin,
            group,
            ..
        } => {
            nonempty(&chosen, "chosen response")?;
            nonempty(&rejected, "rejected response")?;
            if chosen.trim() == rejected.trim() {
                return Err(Rejection::new(
                    Reason::ChosenEqualsRejected,
                    "chosen and rejected responses are identical",
                ));
            }
            let (c, j) = (r.response(&chosen)?, r.response(&rejected)?);
            let id = content_id(&[&p.text, &c.text, &j.text]);
            Some((
                id.clone(),
                Row::Pair(PreferenceRow {
                    pair_id: id,
                    prompt_id: prompt_id.clone(),
                    group_id: group,
                    prompt: p.text.clone(),
                    chosen: c.text,
                    rejected: j.text,
                    label,
                    margin,
                    weight: 1.0,
                    split: split.clone(),
                    source: source.to_string(),
                    prompt_tokens: p.tokens.clone(),
                    chosen_tokens: c.tokens,
                    rejected_tokens: j.tokens,
                }),
            ))
        }
        Example::Rating {
            response, rating, ..
        } => {
            nonempty(&response, "response")?;
            let x = r.response(&response)?;
            let id = content_id(&[&p.text, &x.text]);
            Some((
                id.clone(),
                Row::Rating(RatingRow {
                    rating_id: id,
                    prompt_id: prompt_id.clone(),
                    prompt: p.text.clone(),
                    response: x.text,
                    rating,
                    split: split.clone(),
                    source: source.to_string(),
                    prompt_tokens: p.tokens.clone(),
                    response_tokens: x.tokens,
                }),
            ))
        }
        Example::Sft { completion, .. } => {
            nonempty(&completion, "completion")?;
            let x = r.response(&completion)?;
            let id = content_id(&[&p.text, &x.text]);
            let mut conv = msgs.clone();
            conv.push(Message::new("assistant", &completion));
            Some((
                id.clone(),
                Row::Sft(SftRow {
                    sft_id: id,
                    prompt_id: prompt_id.clone(),
                    prompt: p.text.clone(),
                    completion: x.text,
                    messages: Some(conv),
                    split: split.clone(),
                    source: source.to_string(),
                    prompt_tokens: p.tokens.clone(),
                    completion_tokens: x.tokens,
                }),
            ))
        }
        Example::Prompt { reference: rf, .. } => {
            reference = rf;
            None
        }
    };
    Ok((
        PromptRow {
            prompt_id,
            prompt: p.text,
            messages: Some(msgs),
            prompt_tokens: p.tokens,
            split,
            source: source.to_string(),
            reference,
        },
        row,
    ))
}

fn columns_of(v: &Value) -> String {
    match v {
        Value::Object(m) => m.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

/// Runs the conversion; returns the summary.
pub fn run(args: &ConvertArgs) -> anyhow::Result<Summary> {
    if !(0.0..=1.0).contains(&args.eval_fraction) {
        return Err(PrepError::Flag(format!(
            "--eval-fraction {} must be in [0, 1]",
            args.eval_fraction
        ))
        .into());
    }
    if args.min_score_ratio.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(PrepError::Flag("--min-score-ratio must be positive".into()).into());
    }
    let shard: Shard = args
        .shard
        .resolve()
        .map_err(|e| PrepError::Flag(e.to_string()))?;
    let input = std::path::PathBuf::from(&args.input);
    let mut inputs = vec![("--input", input.as_path())];
    if let Some(t) = &args.tokenizer {
        inputs.push(("--tokenizer", t.as_path()));
    }
    rlhf_core::paths::check_outputs(&[("--out-dir", &args.out_dir)], &inputs)
        .map_err(|e| PrepError::Flag(e.to_string()))?;
    let files = input::resolve(&args.input)?;
    let renderer = Renderer::new(
        args.chat_template,
        args.tokenizer.as_deref(),
        args.max_prompt_tokens,
        args.max_response_tokens,
    )?;
    let opts = args.options();
    let mut lineage = Lineage::new(
        "prep-data",
        env!("CARGO_PKG_VERSION"),
        Artifact::Preferences,
    )
    .with_tokenizer(renderer.tokenizer_hash());
    for f in &files {
        lineage.add_input("input", &f.path)?;
    }
    lineage.extra.insert(
        "chat_template".into(),
        format!("{:?}", renderer.mode()).to_lowercase().into(),
    );
    let dir = &args.out_dir;
    let mut out = Outputs {
        prompts: Sink::new(dir, "prompts.parquet", shard, &lineage, true),
        eval_prompts: Sink::new(dir, "eval_prompts.parquet", shard, &lineage, true),
        preferences: Sink::new(dir, "preferences.parquet", shard, &lineage, false),
        ratings: Sink::new(dir, "ratings.parquet", shard, &lineage, false),
        sft: Sink::new(dir, "sft.parquet", shard, &lineage, false),
        rejects: RejectSink::new(&dir.join("rejects.parquet"), shard, &lineage),
        seen: SeenIds::default(),
        keep_duplicates: args.keep_duplicates,
        eval_fraction: args.eval_fraction,
    };
    let mut summary = Summary::default();
    let mut index = 0usize;
    let progress = rlhf_core::progress::bar(0, "rows");
    for file in &files {
        let mut format = (args.format != Format::Auto).then_some(args.format);
        // A generic file's kind is decided once per file, from its first row.
        let mut file_opts = opts.clone();
        let mut file_rows = 0u64;
        input::for_each_row(file, &mut |raw: RawRow<'_>| {
            index += 1;
            file_rows += 1;
            if !shard.owns(index - 1) {
                summary.rows_other_shards += 1;
                return Ok(());
            }
            summary.rows_read += 1;
            progress.inc(1);
            let mut rejections = Vec::new();
            match &raw.value {
                Err((reason, detail)) => rejections.push(Rejection::new(*reason, detail.clone())),
                Ok(v) => {
                    let fmt = match format {
                        Some(f) => f,
                        None => {
                            let f = formats::detect(v, &opts).ok_or_else(|| {
                                PrepError::input(
                                    raw.file,
                                    Some(raw.row),
                                    format!(
                                        "cannot detect the format from the columns [{}]; pass --format (see --help)",
                                        columns_of(v)
                                    ),
                                )
                            })?;
                            tracing::info!("{}: detected format {}", raw.file.display(), f.name());
                            format = Some(f);
                            f
                        }
                    };
                    if fmt == Format::Generic && file_opts.kind == GenericKind::Auto {
                        if let Some(kind) = formats::generic::detect_kind(v, &file_opts) {
                            file_opts.kind = kind;
                        }
                    }
                    let source = args.source.as_deref().unwrap_or(fmt.name());
                    for item in formats::convert(fmt, v, &file_opts) {
                        let res = match item {
                            Ok(ex) => out.add(ex, &renderer, source)?,
                            Err(rej) => Err(rej),
                        };
                        if let Err(rej) = res {
                            rejections.push(rej);
                        }
                    }
                }
            }
            for rej in rejections {
                if args.strict {
                    return Err(PrepError::input(
                        raw.file,
                        Some(raw.row),
                        format!("{}: {} (--strict)", rej.reason.code(), rej.detail),
                    )
                    .into());
                }
                summary.reject(rej.reason);
                out.rejects.push(raw.file, raw.row, &raw.text, &rej)?;
            }
            Ok(())
        })?;
        summary
            .files
            .insert(file.path.display().to_string(), file_rows);
    }
    progress.finish_and_clear();
    let wrote_examples = out.prompts.rows() + out.eval_prompts.rows() > 0;
    let Outputs {
        prompts,
        eval_prompts,
        preferences,
        ratings,
        sft,
        rejects,
        ..
    } = out;
    if !wrote_examples && summary.rows_read > 0 && shard.count == 1 {
        let top = summary
            .rejected
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(r, _)| r.clone())
            .unwrap_or_default();
        return Err(PrepError::input(
            std::path::Path::new(&args.input),
            None,
            format!(
                "none of the {} rows could be used (most common reason: {top}); hint: check --format and the column flags",
                summary.rows_read
            ),
        )
        .into());
    }
    prompts.finish(&mut summary)?;
    eval_prompts.finish(&mut summary)?;
    preferences.finish(&mut summary)?;
    ratings.finish(&mut summary)?;
    sft.finish(&mut summary)?;
    rejects.finish(&mut summary)?;
    Ok(summary)
}
