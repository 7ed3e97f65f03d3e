//! The typed rows of every artifact, each declared once: the struct, its Arrow schema (with
//! column descriptions), the writer and the reader all come from one `records!` entry.
//! Scores have one column per reward source, so they are held column-wise (`ScoresTable`).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};

use crate::column::{column, ColumnType, Columns};
use crate::error::{CoreError, Result};
use crate::schema::{Artifact, Column};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// Shorthand constructor.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Conversion between typed rows and record batches of one artifact.
pub trait Record: Sized {
    /// The artifact these rows belong to.
    const ARTIFACT: Artifact;
    /// The artifact's columns, in file order.
    fn columns() -> Vec<Column>;
    /// Builds a batch with the artifact's schema.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch>;
    /// Reads rows from a batch (already schema-checked); `path` names the file in errors.
    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Self>>;
}

fn batch(artifact: Artifact, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(artifact.schema(), columns).map_err(|e| {
        CoreError::parquet("building a batch for", format!("<{}>", artifact.name()), e)
    })
}

/// Declares artifact rows: for each, the struct (field order is column order), and its
/// `Record` impl (columns, writer, reader). A field's Rust type gives its Arrow type and
/// nullability (`Option` = nullable, see `ColumnType`); the string after `=>` is the
/// column's description in the schema and in `schemas/*.json`. An optional
/// `check: function` validates each row read (`Err(reason)` names the row).
macro_rules! records {
    ($(
        $(#[doc = $struct_doc:literal])*
        $name:ident for $artifact:ident $(, check: $check:path)? {
            $($field:ident: $ty:ty => $doc:literal,)*
        }
    )*) => {$(
        $(#[doc = $struct_doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $(#[doc = $doc] pub $field: $ty,)*
        }

        impl Record for $name {
            const ARTIFACT: Artifact = Artifact::$artifact;

            fn columns() -> Vec<Column> {
                vec![$(column::<$ty>(stringify!($field), $doc),)*]
            }

            fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
                batch(
                    Self::ARTIFACT,
                    vec![$(<$ty as ColumnType>::build(rows.iter().map(|r| &r.$field)),)*],
                )
            }

            fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
                let c = Columns::new(b, path);
                $(let mut $field = <$ty as ColumnType>::read(&c, stringify!($field))?.into_iter();)*
                let rows: Vec<Self> = (0..b.num_rows())
                    .map(|_| $name {
                        $($field: $field.next().expect("a column holds one value per row"),)*
                    })
                    .collect();
                $(
                    for (i, row) in rows.iter().enumerate() {
                        $check(row).map_err(|reason| c.bad(Some(i), reason))?;
                    }
                )?
                Ok(rows)
            }
        }
    )*};
}

records! {
    /// One prompt.
    PromptRow for Prompts {
        prompt_id: String => "Stable id: content hash of the prompt.",
        prompt: String => "Prompt text exactly as fed to the model (chat template applied).",
        messages: Option<Vec<Message>> => "The prompt as chat messages, when it came as a conversation.",
        prompt_tokens: Option<Vec<i32>> => "Token ids of `prompt` (null until a tokenizer is known).",
        split: String => "train or eval (deterministic by hash).",
        source: String => "Dataset or generator the row came from.",
        reference: Option<String> => "Reference answer, for exact-match rule rewards.",
    }

    /// One preference pair.
    PreferenceRow for Preferences {
        pair_id: String => "Stable id: content hash of prompt, chosen and rejected.",
        prompt_id: String => "Id of the prompt (same hash as in prompts).",
        group_id: Option<String> => "Ranking group the pair was expanded from (K-way rankings).",
        prompt: String => "Prompt text as fed to the model.",
        chosen: String => "The preferred response.",
        rejected: String => "The other response.",
        label: f32 => "P(chosen preferred): 1.0, or 0.5 for a tie.",
        margin: Option<f32> => "Strength of preference when known (e.g. SHP score ratio).",
        weight: f32 => "Loss weight of the pair.",
        split: String => "train or eval.",
        source: String => "Dataset the row came from.",
        prompt_tokens: Option<Vec<i32>> => "Token ids of `prompt` (with --tokenizer).",
        chosen_tokens: Option<Vec<i32>> => "Token ids of `chosen` (with --tokenizer).",
        rejected_tokens: Option<Vec<i32>> => "Token ids of `rejected` (with --tokenizer).",
    }

    /// One pointwise rating.
    RatingRow for Ratings {
        rating_id: String => "Stable id: content hash of prompt and response.",
        prompt_id: String => "Id of the prompt.",
        prompt: String => "Prompt text as fed to the model.",
        response: String => "The rated response.",
        rating: f32 => "1.0 thumbs up, 0.0 thumbs down, or a scalar rating.",
        split: String => "train or eval.",
        source: String => "Dataset the row came from.",
        prompt_tokens: Option<Vec<i32>> => "Token ids of `prompt` (with --tokenizer).",
        response_tokens: Option<Vec<i32>> => "Token ids of `response` (with --tokenizer).",
    }

    /// One supervised example.
    SftRow for Sft {
        sft_id: String => "Stable id: content hash of prompt and completion.",
        prompt_id: String => "Id of the prompt.",
        prompt: String => "Prompt text as fed to the model (masked out of the loss).",
        completion: String => "Completion text the model learns.",
        messages: Option<Vec<Message>> => "The example as chat messages, when it came as a conversation.",
        split: String => "train or eval.",
        source: String => "Dataset the row came from.",
        prompt_tokens: Option<Vec<i32>> => "Token ids of `prompt` (with --tokenizer).",
        completion_tokens: Option<Vec<i32>> => "Token ids of `completion` (with --tokenizer).",
    }

    /// One sampled response.
    RolloutRow for Rollouts, check: RolloutRow::check_lengths {
        rollout_id: String => "Stable id: hash of prompt id, iteration, sample index and policy id.",
        prompt_id: String => "Id of the prompt sampled from.",
        iteration: i32 => "Policy iteration the sample belongs to.",
        sample_index: i32 => "Index of the sample among the K of its prompt.",
        prompt: String => "Prompt text.",
        messages: Option<Vec<Message>> => "The prompt as chat messages, when it came as a conversation (the prompts' `messages`).",
        response: String => "Decoded response text (special tokens removed).",
        prompt_tokens: Vec<i32> => "Prompt token ids as fed to the model.",
        response_tokens: Vec<i32> => "Sampled token ids (the EOS token included when sampled).",
        logprobs: Vec<f32> => "Per response token: log-probability under the sampling policy (after temperature/top-k/top-p).",
        ref_logprobs: Option<Vec<f32>> => "Per response token: log-probability under the reference (adapter off), temperature 1.",
        finish_reason: String => "eos, length or stop.",
        policy_id: String => "Content hash of the policy adapter (\"base\" without one).",
        seed: u64 => "Seed of this sample's random stream.",
    }

    /// One metric value (long form).
    MetricRow for Metrics {
        stage: String => "Producing stage (train-sft, train-rm-lora, ppo-update, ...).",
        iteration: i32 => "Policy iteration (0 outside the RL loop).",
        step: i64 => "Optimiser step (or -1 for a whole-run figure).",
        metric: String => "Metric name, e.g. train/loss, eval/accuracy.",
        value: f64 => "Metric value.",
    }

    /// One rejected input row.
    RejectRow for Rejects {
        source_file: String => "Input file the row came from.",
        row_number: i64 => "1-based row (line) number in that file.",
        reason: String => "Why the row was not used.",
        row: String => "The input row as JSON text.",
    }
}

impl RolloutRow {
    /// Every response token has its sampling (and, when present, reference) log-probability.
    fn check_lengths(&self) -> std::result::Result<(), String> {
        let n = self.response_tokens.len();
        let ref_len = self.ref_logprobs.as_ref().map_or(n, Vec::len);
        if self.logprobs.len() != n || ref_len != n {
            return Err(format!(
                "rollout {}: {n} response tokens but {} logprobs and {ref_len} ref_logprobs",
                self.rollout_id,
                self.logprobs.len(),
            ));
        }
        Ok(())
    }
}

/// The required columns of a scores file (reward sources follow as extra float columns).
pub fn scores_columns() -> Vec<Column> {
    vec![
        column::<String>("rollout_id", "Id of the scored rollout."),
        column::<f32>(
            "reward",
            "The scalar training uses: weighted sum of the sources plus penalties.",
        ),
        column::<f32>(
            "penalty",
            "Penalties included in `reward` (e.g. missing EOS).",
        ),
    ]
}

/// Scores, column-wise: the required columns plus one float32 column per reward source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoresTable {
    pub rollout_id: Vec<String>,
    pub reward: Vec<f32>,
    pub penalty: Vec<f32>,
    /// (column name, values) for each reward source, in column order.
    pub sources: Vec<(String, Vec<Option<f32>>)>,
}

impl ScoresTable {
    /// The batch, with source columns appended after the required ones.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let base = Artifact::Scores.schema();
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols: Vec<ArrayRef> = vec![
            String::build(self.rollout_id.iter()),
            f32::build(self.reward.iter()),
            f32::build(self.penalty.iter()),
        ];
        for (name, values) in &self.sources {
            fields.push(Field::new(name, DataType::Float32, true));
            cols.push(Option::<f32>::build(values.iter()));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| CoreError::parquet("building a batch for", "<scores>", e))
    }

    /// Reads a batch; every float column beyond the required ones is a source.
    pub fn append_batch(&mut self, b: &RecordBatch, path: &Path) -> Result<()> {
        let c = Columns::new(b, path);
        let start = self.rollout_id.len();
        self.rollout_id.extend(c.str("rollout_id")?);
        self.reward.extend(f32::read(&c, "reward")?);
        self.penalty.extend(f32::read(&c, "penalty")?);
        let required = scores_columns();
        for f in b.schema().fields() {
            let name = f.name();
            if required.iter().any(|col| col.name == name) {
                continue;
            }
            let values: Vec<Option<f32>> = match f.data_type() {
                DataType::Float32 => Option::<f32>::read(&c, name)?,
                DataType::Float64 => {
                    c.nullable(name, |a, i| a.as_primitive::<Float64Type>().value(i) as f32)
                }
                _ => continue,
            };
            match self.sources.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    v.resize(start, None);
                    v.extend(values);
                }
                None => {
                    let mut v = vec![None; start];
                    v.extend(values);
                    self.sources.push((name.clone(), v));
                }
            }
        }
        let n = self.rollout_id.len();
        for (_, v) in self.sources.iter_mut() {
            v.resize(n, None);
        }
        Ok(())
    }

    /// Values of one source column, if present.
    pub fn source(&self, name: &str) -> Option<&[Option<f32>]> {
        self.sources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Reads a scores dataset (file, folder or glob).
    pub fn read(spec: &Path) -> Result<(ScoresTable, crate::parquet_io::Dataset)> {
        let ds = crate::parquet_io::Dataset::open(spec, Artifact::Scores)?;
        let mut t = ScoresTable::default();
        for item in ds.batches() {
            let (path, b) = item?;
            t.append_batch(&b, &path)?;
        }
        Ok((t, ds))
    }

    /// Writes the table as one scores file.
    pub fn write(&self, target: &Path, lineage: &crate::lineage::Lineage) -> Result<usize> {
        crate::parquet_io::write_batch(target, Artifact::Scores, &self.to_batch()?, lineage)
    }
}
