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

    /// The required columns (extra nullable columns may follow in files), declared with
    /// the artifact's rows in `records`.
    pub fn columns(self) -> Vec<Column> {
        use crate::records::*;
        match self {
            Artifact::Prompts => PromptRow::columns(),
            Artifact::Preferences => PreferenceRow::columns(),
            Artifact::Ratings => RatingRow::columns(),
            Artifact::Sft => SftRow::columns(),
            Artifact::Rollouts => RolloutRow::columns(),
            Artifact::Scores => scores_columns(),
            Artifact::Metrics => MetricRow::columns(),
            Artifact::Rejects => RejectRow::columns(),
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
    use DataType::{Int32, Int64, Utf8};

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
