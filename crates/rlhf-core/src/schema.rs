//! The Arrow schema of every Parquet artifact, defined once. Column names are the contract
//! between stages; extra nullable columns are allowed in files. `schemas/*.json` is
//! generated from these definitions (`gen-schemas`) and checked in `make test`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde_json::json;

/// Every artifact kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Artifact {
    Prompts,
    Preferences,
    Ratings,
    Sft,
    Rollouts,
    Scores,
    Metrics,
    Rejects,
}

/// Version of the column contract; bump when a column changes meaning or type.
pub const SCHEMA_VERSION: u32 = 1;

/// One column: name, type, nullable, description.
pub struct Column {
    pub name: &'static str,
    pub data_type: DataType,
    pub nullable: bool,
    pub doc: &'static str,
}

fn col(name: &'static str, data_type: DataType, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        data_type,
        nullable,
        doc,
    }
}

/// `list<int32>` (token ids).
pub fn token_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
}

/// `list<float32>` (per-token values).
pub fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// `list<struct<role: utf8, content: utf8>>` (chat messages).
pub fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        true,
    )))
}

/// The fields of one chat message.
pub fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

use DataType::{Float32, Float64, Int32, Int64, UInt64, Utf8};

impl Artifact {
    /// All artifacts, in documentation order.
    pub const ALL: [Artifact; 8] = [
        Artifact::Prompts,
        Artifact::Preferences,
        Artifact::Ratings,
        Artifact::Sft,
        Artifact::Rollouts,
        Artifact::Scores,
        Artifact::Metrics,
        Artifact::Rejects,
    ];

    /// The artifact's name (file stem of its schema, key in lineage).
    pub fn name(self) -> &'static str {
        match self {
            Artifact::Prompts => "prompts",
            Artifact::Preferences => "preferences",
            Artifact::Ratings => "ratings",
            Artifact::Sft => "sft",
            Artifact::Rollouts => "rollouts",
            Artifact::Scores => "scores",
            Artifact::Metrics => "metrics",
            Artifact::Rejects => "rejects",
        }
    }

    /// Looks an artifact up by name.
    pub fn from_name(name: &str) -> Option<Artifact> {
        Artifact::ALL.into_iter().find(|a| a.name() == name)
    }

    /// One line on what the artifact holds.
    pub fn description(self) -> &'static str {
        match self {
            Artifact::Prompts => "Prompts to sample from: one row per prompt.",
            Artifact::Preferences => "Preference pairs: a prompt, a chosen and a rejected response, and P(chosen preferred).",
            Artifact::Ratings => "Pointwise feedback: a prompt, a response and a rating (thumbs up = 1, down = 0, or a scalar).",
            Artifact::Sft => "Supervised fine-tuning examples: a prompt and the completion to learn.",
            Artifact::Rollouts => "Sampled responses with per-token sampling and reference log-probabilities.",
            Artifact::Scores => "Rewards: one row per rollout; `reward` is what training uses, other float columns are its sources.",
            Artifact::Metrics => "Training and evaluation metrics in long form.",
            Artifact::Rejects => "Input rows a stage could not use, with the reason.",
        }
    }

    /// The required columns (extra nullable columns may follow in files).
    pub fn columns(self) -> Vec<Column> {
        match self {
            Artifact::Prompts => vec![
                col("prompt_id", Utf8, false, "Stable id: content hash of the prompt."),
                col("prompt", Utf8, false, "Prompt text exactly as fed to the model (chat template applied)."),
                col("messages", messages_type(), true, "The prompt as chat messages, when it came as a conversation."),
                col("prompt_tokens", token_list(), true, "Token ids of `prompt` (null until a tokenizer is known)."),
                col("split", Utf8, false, "train or eval (deterministic by hash)."),
                col("source", Utf8, false, "Dataset or generator the row came from."),
                col("reference", Utf8, true, "Reference answer, for exact-match rule rewards."),
            ],
            Artifact::Preferences => vec![
                col("pair_id", Utf8, false, "Stable id: content hash of prompt, chosen and rejected."),
                col("prompt_id", Utf8, false, "Id of the prompt (same hash as in prompts)."),
                col("group_id", Utf8, true, "Ranking group the pair was expanded from (K-way rankings)."),
                col("prompt", Utf8, false, "Prompt text as fed to the model."),
                col("chosen", Utf8, false, "The preferred response."),
                col("rejected", Utf8, false, "The other response."),
                col("label", Float32, false, "P(chosen preferred): 1.0, or 0.5 for a tie."),
                col("margin", Float32, true, "Strength of preference when known (e.g. SHP score ratio)."),
                col("weight", Float32, false, "Loss weight of the pair."),
                col("split", Utf8, false, "train or eval."),
                col("source", Utf8, false, "Dataset the row came from."),
                col("prompt_tokens", token_list(), true, "Token ids of `prompt` (with --tokenizer)."),
                col("chosen_tokens", token_list(), true, "Token ids of `chosen` (with --tokenizer)."),
                col("rejected_tokens", token_list(), true, "Token ids of `rejected` (with --tokenizer)."),
            ],
            Artifact::Ratings => vec![
                col("rating_id", Utf8, false, "Stable id: content hash of prompt and response."),
                col("prompt_id", Utf8, false, "Id of the prompt."),
                col("prompt", Utf8, false, "Prompt text as fed to the model."),
                col("response", Utf8, false, "The rated response."),
                col("rating", Float32, false, "1.0 thumbs up, 0.0 thumbs down, or a scalar rating."),
                col("split", Utf8, false, "train or eval."),
                col("source", Utf8, false, "Dataset the row came from."),
                col("prompt_tokens", token_list(), true, "Token ids of `prompt` (with --tokenizer)."),
                col("response_tokens", token_list(), true, "Token ids of `response` (with --tokenizer)."),
            ],
            Artifact::Sft => vec![
                col("sft_id", Utf8, false, "Stable id: content hash of prompt and completion."),
                col("prompt_id", Utf8, false, "Id of the prompt."),
                col("prompt", Utf8, false, "Prompt text as fed to the model (masked out of the loss)."),
                col("completion", Utf8, false, "Completion text the model learns."),
                col("messages", messages_type(), true, "The example as chat messages, when it came as a conversation."),
                col("split", Utf8, false, "train or eval."),
                col("source", Utf8, false, "Dataset the row came from."),
                col("prompt_tokens", token_list(), true, "Token ids of `prompt` (with --tokenizer)."),
                col("completion_tokens", token_list(), true, "Token ids of `completion` (with --tokenizer)."),
            ],
            Artifact::Rollouts => vec![
                col("rollout_id", Utf8, false, "Stable id: hash of prompt id, iteration, sample index and policy id."),
                col("prompt_id", Utf8, false, "Id of the prompt sampled from."),
                col("iteration", Int32, false, "Policy iteration the sample belongs to."),
                col("sample_index", Int32, false, "Index of the sample among the K of its prompt."),
                col("prompt", Utf8, false, "Prompt text."),
                col("response", Utf8, false, "Decoded response text (special tokens removed)."),
                col("prompt_tokens", token_list(), false, "Prompt token ids as fed to the model."),
                col("response_tokens", token_list(), false, "Sampled token ids (the EOS token included when sampled)."),
                col("logprobs", float_list(), false, "Per response token: log-probability under the sampling policy (after temperature/top-k/top-p)."),
                col("ref_logprobs", float_list(), true, "Per response token: log-probability under the reference (adapter off), temperature 1."),
                col("finish_reason", Utf8, false, "eos, length or stop."),
                col("policy_id", Utf8, false, "Content hash of the policy adapter (\"base\" without one)."),
                col("seed", UInt64, false, "Seed of this sample's random stream."),
            ],
            Artifact::Scores => vec![
                col("rollout_id", Utf8, false, "Id of the scored rollout."),
                col("reward", Float32, false, "The scalar training uses: weighted sum of the sources plus penalties."),
                col("penalty", Float32, false, "Penalties included in `reward` (e.g. missing EOS)."),
            ],
            Artifact::Metrics => vec![
                col("stage", Utf8, false, "Producing stage (train-sft, train-rm-lora, ppo-update, ...)."),
                col("iteration", Int32, false, "Policy iteration (0 outside the RL loop)."),
                col("step", Int64, false, "Optimiser step (or -1 for a whole-run figure)."),
                col("metric", Utf8, false, "Metric name, e.g. train/loss, eval/accuracy."),
                col("value", Float64, false, "Metric value."),
            ],
            Artifact::Rejects => vec![
                col("source_file", Utf8, false, "Input file the row came from."),
                col("row_number", Int64, false, "1-based row (line) number in that file."),
                col("reason", Utf8, false, "Why the row was not used."),
                col("row", Utf8, false, "The input row as JSON text."),
            ],
        }
    }

    /// The Arrow schema of the required columns, with descriptions as field metadata.
    pub fn schema(self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns()
            .into_iter()
            .map(|c| {
                Field::new(c.name, c.data_type, c.nullable).with_metadata(HashMap::from([(
                    "description".to_string(),
                    c.doc.to_string(),
                )]))
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The JSON description written to `schemas/<name>.json`.
    pub fn json_description(self) -> serde_json::Value {
        let columns: Vec<_> = self
            .columns()
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": type_name(&c.data_type),
                    "nullable": c.nullable,
                    "description": c.doc,
                })
            })
            .collect();
        json!({
            "artifact": self.name(),
            "version": SCHEMA_VERSION,
            "description": self.description(),
            "extra_columns": "allowed when nullable",
            "columns": columns,
        })
    }
}

/// A short, stable name for a data type, e.g. `list<int32>`.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 => "utf8".into(),
        DataType::LargeUtf8 => "large_utf8".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "bool".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("list<{}>", type_name(f.data_type())),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other}").to_lowercase(),
    }
}

/// Renders a schema on one line (`name: type, ...`) for error messages.
pub fn schema_line(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `found` carries every required column of `artifact` with the right type.
/// Returns a description of the first problem.
pub fn check_schema(artifact: Artifact, found: &Schema) -> Result<(), String> {
    for c in artifact.columns() {
        match found.field_with_name(c.name) {
            Err(_) if c.nullable => {}
            Err(_) => return Err(format!("column `{}` is missing", c.name)),
            Ok(f) if !same_type(f.data_type(), &c.data_type) => {
                return Err(format!(
                    "column `{}` has type {}, expected {}",
                    c.name,
                    type_name(f.data_type()),
                    type_name(&c.data_type)
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn same_type(a: &DataType, b: &DataType) -> bool {
    type_name(a) == type_name(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Artifact::ALL {
            assert_eq!(Artifact::from_name(a.name()), Some(a));
        }
    }

    #[test]
    fn schema_check_names_column_and_types() {
        let found = Schema::new(vec![
            Field::new("stage", Utf8, false),
            Field::new("iteration", Int32, false),
            Field::new("step", Int64, false),
            Field::new("metric", Utf8, false),
            Field::new("value", Utf8, false),
        ]);
        let err = check_schema(Artifact::Metrics, &found).unwrap_err();
        assert_eq!(err, "column `value` has type utf8, expected float64");
        let missing = Schema::new(vec![Field::new("stage", Utf8, false)]);
        assert_eq!(
            check_schema(Artifact::Metrics, &missing).unwrap_err(),
            "column `iteration` is missing"
        );
        assert!(check_schema(Artifact::Metrics, &Artifact::Metrics.schema()).is_ok());
    }
}
