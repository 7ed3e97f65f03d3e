//! Known feedback formats: each turns one raw row into examples (pairs, ratings, SFT
//! examples or prompts) or rejections. `detect` picks a format from a row's columns when
//! that is unambiguous.

pub mod fields;
pub mod generic;
pub mod hh_rlhf;
pub mod ranking;
pub mod shp;
pub mod thumbs;
pub mod tldr;
pub mod ultrafeedback;

use clap::ValueEnum;
use rlhf_core::records::Message;
use serde_json::Value;

use crate::reject::Rejection;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Detect per file from the first row's columns.
    Auto,
    /// Anthropic HH-RLHF: `chosen`/`rejected` transcripts with "Human:"/"Assistant:" turns.
    HhRlhf,
    /// Stanford SHP: history, human_ref_A/B, labels, score_A/B.
    Shp,
    /// OpenAI summarize-from-feedback comparisons: info.post, summaries[0/1].text, choice.
    Tldr,
    /// UltraFeedback-binarized: prompt, chosen/rejected message lists, score_chosen/rejected.
    Ultrafeedback,
    /// Thumbs up/down: context (list of turns, or its JSON text), generation, reward 1/0.
    Thumbs,
    /// K-way rankings: prompt, responses, and ranks (lower is better) or ranking (best first).
    Ranking,
    /// Any columns, mapped with --prompt-column etc.; --kind says what the rows are.
    Generic,
}

impl Format {
    /// The name used in `source` columns.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::HhRlhf => "hh-rlhf",
            Format::Shp => "shp",
            Format::Tldr => "tldr",
            Format::Ultrafeedback => "ultrafeedback",
            Format::Thumbs => "thumbs",
            Format::Ranking => "ranking",
            Format::Generic => "generic",
        }
    }
}

/// What a generic file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenericKind {
    /// Decide from the columns present (pairs, then ratings, then sft, then prompts).
    Auto,
    /// prompt, chosen, rejected [, label, margin].
    Pairs,
    /// prompt, response, rating.
    Ratings,
    /// prompt and completion, or a messages list ending with the assistant reply.
    Sft,
    /// prompt [, reference].
    Prompts,
}

/// Column names of the generic format and format options.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    pub kind: GenericKind,
    pub prompt_column: String,
    pub chosen_column: String,
    pub rejected_column: String,
    pub response_column: String,
    pub rating_column: String,
    pub completion_column: String,
    pub messages_column: String,
    pub reference_column: String,
    pub label_column: Option<String>,
    pub margin_column: Option<String>,
    /// SHP: pairs whose score ratio is below this are rejected.
    pub min_score_ratio: Option<f64>,
}

/// One example made from a raw row. Prompts are message lists; rendering (chat template)
/// happens later.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Pair {
        prompt: Vec<Message>,
        chosen: String,
        rejected: String,
        label: f32,
        margin: Option<f32>,
        group: Option<String>,
    },
    Rating {
        prompt: Vec<Message>,
        response: String,
        rating: f32,
    },
    Sft {
        prompt: Vec<Message>,
        completion: String,
    },
    Prompt {
        prompt: Vec<Message>,
        reference: Option<String>,
    },
}

/// Converts one row in a known format (not Auto).
pub fn convert(
    format: Format,
    row: &Value,
    opts: &FormatOptions,
) -> Vec<Result<Example, Rejection>> {
    let one = |r: Result<Example, Rejection>| vec![r];
    match format {
        Format::HhRlhf => one(hh_rlhf::convert(row)),
        Format::Shp => one(shp::convert(row, opts.min_score_ratio)),
        Format::Tldr => one(tldr::convert(row)),
        Format::Ultrafeedback => one(ultrafeedback::convert(row)),
        Format::Thumbs => one(thumbs::convert(row)),
        Format::Ranking => ranking::convert(row),
        Format::Generic | Format::Auto => one(generic::convert(row, opts)),
    }
}

/// Detects the format of a row from its columns, or None when ambiguous/unknown.
pub fn detect(row: &Value, opts: &FormatOptions) -> Option<Format> {
    let has = |k: &str| fields::field(row, k).is_some();
    let is_str = |k: &str| matches!(fields::field(row, k), Some(Value::String(_)));
    if has("chosen") && has("rejected") {
        if is_str("chosen") && !has("prompt") {
            let c = fields::field(row, "chosen")
                .and_then(Value::as_str)
                .unwrap_or("");
            if c.contains("Human:") && c.contains("Assistant:") {
                return Some(Format::HhRlhf);
            }
        }
        if matches!(fields::field(row, "chosen"), Some(Value::Array(_))) {
            return Some(Format::Ultrafeedback);
        }
    }
    if has("human_ref_A") && has("human_ref_B") {
        return Some(Format::Shp);
    }
    if has("summaries") && has("choice") {
        return Some(Format::Tldr);
    }
    if has("generation") && has("reward") {
        return Some(Format::Thumbs);
    }
    if has("responses") && (has("ranks") || has("ranking")) {
        return Some(Format::Ranking);
    }
    generic::detect_kind(row, opts).map(|_| Format::Generic)
}
