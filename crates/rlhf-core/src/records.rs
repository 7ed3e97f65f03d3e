//! Typed rows of each artifact and their conversion to and from Arrow record batches.
//! Scores have one column per reward source, so they are held column-wise (`ScoresTable`).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray, StructArray, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema, UInt64Type,
};

use crate::error::{CoreError, Result};
use crate::schema::{message_fields, Artifact};

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
    /// Builds a batch with the artifact's schema.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch>;
    /// Reads rows from a batch (already schema-checked); `path` names the file in errors.
    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Self>>;
}

/// One prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt_id: String,
    pub prompt: String,
    pub messages: Option<Vec<Message>>,
    pub prompt_tokens: Option<Vec<i32>>,
    pub split: String,
    pub source: String,
    pub reference: Option<String>,
}

/// One preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRow {
    pub pair_id: String,
    pub prompt_id: String,
    pub group_id: Option<String>,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub label: f32,
    pub margin: Option<f32>,
    pub weight: f32,
    pub split: String,
    pub source: String,
    pub prompt_tokens: Option<Vec<i32>>,
    pub chosen_tokens: Option<Vec<i32>>,
    pub rejected_tokens: Option<Vec<i32>>,
}

/// One pointwise rating.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingRow {
    pub rating_id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub rating: f32,
    pub split: String,
    pub source: String,
    pub prompt_tokens: Option<Vec<i32>>,
    pub response_tokens: Option<Vec<i32>>,
}

/// One supervised example.
#[derive(Debug, Clone, PartialEq)]
pub struct SftRow {
    pub sft_id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub completion: String,
    pub messages: Option<Vec<Message>>,
    pub split: String,
    pub source: String,
    pub prompt_tokens: Option<Vec<i32>>,
    pub completion_tokens: Option<Vec<i32>>,
}

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub rollout_id: String,
    pub prompt_id: String,
    pub iteration: i32,
    pub sample_index: i32,
    pub prompt: String,
    pub response: String,
    pub prompt_tokens: Vec<i32>,
    pub response_tokens: Vec<i32>,
    pub logprobs: Vec<f32>,
    pub ref_logprobs: Option<Vec<f32>>,
    pub finish_reason: String,
    pub policy_id: String,
    pub seed: u64,
}

/// One metric value (long form).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub stage: String,
    pub iteration: i32,
    pub step: i64,
    pub metric: String,
    pub value: f64,
}

/// One rejected input row.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRow {
    pub source_file: String,
    pub row_number: i64,
    pub reason: String,
    pub row: String,
}

// ---------------------------------------------------------------------------------------
// Column builders

fn strs<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn opt_strs<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}

fn tokens<'a>(it: impl Iterator<Item = Option<&'a Vec<i32>>>) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(it.map(
        |o| o.map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>()),
    )))
}

fn floats<'a>(it: impl Iterator<Item = Option<&'a Vec<f32>>>) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(it.map(
        |o| o.map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>()),
    )))
}

fn messages<'a>(it: impl Iterator<Item = Option<&'a Vec<Message>>>) -> ArrayRef {
    let mut offsets = vec![0i32];
    let mut roles = Vec::new();
    let mut contents = Vec::new();
    let mut valid = Vec::new();
    for m in it {
        if let Some(list) = m {
            for msg in list {
                roles.push(msg.role.as_str());
                contents.push(msg.content.as_str());
            }
        }
        valid.push(m.is_some());
        offsets.push(roles.len() as i32);
    }
    let values = StructArray::new(
        message_fields(),
        vec![strs(roles.into_iter()), strs(contents.into_iter())],
        None,
    );
    let field = Arc::new(Field::new("item", DataType::Struct(message_fields()), true));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        Some(valid.into()),
    ))
}

fn batch(artifact: Artifact, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(artifact.schema(), columns).map_err(|e| {
        CoreError::parquet("building a batch for", format!("<{}>", artifact.name()), e)
    })
}

// ---------------------------------------------------------------------------------------
// Column readers

/// Typed access to the columns of one batch, with errors naming file, row and column.
pub struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Columns<'a> {
    /// Wraps a batch read from `path`.
    pub fn new(batch: &'a RecordBatch, path: &'a Path) -> Self {
        Columns { batch, path }
    }

    fn bad(&self, row: Option<usize>, message: String) -> CoreError {
        CoreError::BadInput {
            path: self.path.to_path_buf(),
            row,
            message,
        }
    }

    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.batch.column_by_name(name)
    }

    fn required(&self, name: &str) -> Result<&'a ArrayRef> {
        self.column(name)
            .ok_or_else(|| self.bad(None, format!("column `{name}` is missing")))
    }

    fn null_error(&self, name: &str, row: usize) -> CoreError {
        self.bad(Some(row), format!("column `{name}` is null"))
    }

    /// A required string column.
    pub fn str(&self, name: &str) -> Result<Vec<String>> {
        let a = self.required(name)?.as_string::<i32>();
        (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Err(self.null_error(name, i))
                } else {
                    Ok(a.value(i).to_string())
                }
            })
            .collect()
    }

    /// A nullable string column (absent = all null).
    pub fn opt_str(&self, name: &str) -> Vec<Option<String>> {
        match self.column(name) {
            None => vec![None; self.batch.num_rows()],
            Some(a) => {
                let a = a.as_string::<i32>();
                (0..a.len())
                    .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
                    .collect()
            }
        }
    }

    fn prim<T: arrow::datatypes::ArrowPrimitiveType>(&self, name: &str) -> Result<Vec<T::Native>> {
        let a = self.required(name)?.as_primitive::<T>();
        (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Err(self.null_error(name, i))
                } else {
                    Ok(a.value(i))
                }
            })
            .collect()
    }

    /// A required float32 column.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        self.prim::<Float32Type>(name)
    }
    /// A required float64 column.
    pub fn f64(&self, name: &str) -> Result<Vec<f64>> {
        self.prim::<Float64Type>(name)
    }
    /// A required int32 column.
    pub fn i32(&self, name: &str) -> Result<Vec<i32>> {
        self.prim::<Int32Type>(name)
    }
    /// A required int64 column.
    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        self.prim::<Int64Type>(name)
    }
    /// A required uint64 column.
    pub fn u64(&self, name: &str) -> Result<Vec<u64>> {
        self.prim::<UInt64Type>(name)
    }

    /// A nullable float32 column (absent = all null).
    pub fn opt_f32(&self, name: &str) -> Vec<Option<f32>> {
        match self.column(name) {
            None => vec![None; self.batch.num_rows()],
            Some(a) => {
                let a = a.as_primitive::<Float32Type>();
                (0..a.len())
                    .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                    .collect()
            }
        }
    }

    fn opt_list<T: arrow::datatypes::ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Vec<Option<Vec<T::Native>>> {
        match self.column(name) {
            None => vec![None; self.batch.num_rows()],
            Some(a) => {
                let a = a.as_list::<i32>();
                (0..a.len())
                    .map(|i| {
                        (!a.is_null(i)).then(|| a.value(i).as_primitive::<T>().values().to_vec())
                    })
                    .collect()
            }
        }
    }

    /// A nullable list<int32> column.
    pub fn opt_tokens(&self, name: &str) -> Vec<Option<Vec<i32>>> {
        self.opt_list::<Int32Type>(name)
    }

    /// A required list<int32> column.
    pub fn tokens(&self, name: &str) -> Result<Vec<Vec<i32>>> {
        self.required(name)?;
        self.opt_tokens(name)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_error(name, i)))
            .collect()
    }

    /// A nullable list<float32> column.
    pub fn opt_floats(&self, name: &str) -> Vec<Option<Vec<f32>>> {
        self.opt_list::<Float32Type>(name)
    }

    /// A required list<float32> column.
    pub fn floats(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        self.required(name)?;
        self.opt_floats(name)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.null_error(name, i)))
            .collect()
    }

    /// A nullable list<struct<role, content>> column.
    pub fn opt_messages(&self, name: &str) -> Vec<Option<Vec<Message>>> {
        match self.column(name) {
            None => vec![None; self.batch.num_rows()],
            Some(a) => {
                let a = a.as_list::<i32>();
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            return None;
                        }
                        let v = a.value(i);
                        let s = v.as_struct();
                        let roles = s.column(0).as_string::<i32>();
                        let contents = s.column(1).as_string::<i32>();
                        Some(
                            (0..s.len())
                                .map(|j| Message::new(roles.value(j), contents.value(j)))
                                .collect(),
                        )
                    })
                    .collect()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Records

impl Record for PromptRow {
    const ARTIFACT: Artifact = Artifact::Prompts;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.prompt_id.as_str())),
                strs(rows.iter().map(|r| r.prompt.as_str())),
                messages(rows.iter().map(|r| r.messages.as_ref())),
                tokens(rows.iter().map(|r| r.prompt_tokens.as_ref())),
                strs(rows.iter().map(|r| r.split.as_str())),
                strs(rows.iter().map(|r| r.source.as_str())),
                opt_strs(rows.iter().map(|r| r.reference.as_deref())),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let (ids, prompts, msgs, toks) = (
            c.str("prompt_id")?,
            c.str("prompt")?,
            c.opt_messages("messages"),
            c.opt_tokens("prompt_tokens"),
        );
        let (split, source, reference) =
            (c.str("split")?, c.str("source")?, c.opt_str("reference"));
        Ok(ids
            .into_iter()
            .zip(prompts)
            .zip(msgs)
            .zip(toks)
            .zip(split)
            .zip(source)
            .zip(reference)
            .map(
                |(
                    (((((prompt_id, prompt), messages), prompt_tokens), split), source),
                    reference,
                )| {
                    PromptRow {
                        prompt_id,
                        prompt,
                        messages,
                        prompt_tokens,
                        split,
                        source,
                        reference,
                    }
                },
            )
            .collect())
    }
}

impl Record for PreferenceRow {
    const ARTIFACT: Artifact = Artifact::Preferences;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.pair_id.as_str())),
                strs(rows.iter().map(|r| r.prompt_id.as_str())),
                opt_strs(rows.iter().map(|r| r.group_id.as_deref())),
                strs(rows.iter().map(|r| r.prompt.as_str())),
                strs(rows.iter().map(|r| r.chosen.as_str())),
                strs(rows.iter().map(|r| r.rejected.as_str())),
                Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.label))),
                Arc::new(rows.iter().map(|r| r.margin).collect::<Float32Array>()),
                Arc::new(Float32Array::from_iter_values(
                    rows.iter().map(|r| r.weight),
                )),
                strs(rows.iter().map(|r| r.split.as_str())),
                strs(rows.iter().map(|r| r.source.as_str())),
                tokens(rows.iter().map(|r| r.prompt_tokens.as_ref())),
                tokens(rows.iter().map(|r| r.chosen_tokens.as_ref())),
                tokens(rows.iter().map(|r| r.rejected_tokens.as_ref())),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let pair_id = c.str("pair_id")?;
        let prompt_id = c.str("prompt_id")?;
        let group_id = c.opt_str("group_id");
        let prompt = c.str("prompt")?;
        let chosen = c.str("chosen")?;
        let rejected = c.str("rejected")?;
        let label = c.f32("label")?;
        let margin = c.opt_f32("margin");
        let weight = c.f32("weight")?;
        let split = c.str("split")?;
        let source = c.str("source")?;
        let pt = c.opt_tokens("prompt_tokens");
        let ct = c.opt_tokens("chosen_tokens");
        let rt = c.opt_tokens("rejected_tokens");
        Ok((0..b.num_rows())
            .map(|i| PreferenceRow {
                pair_id: pair_id[i].clone(),
                prompt_id: prompt_id[i].clone(),
                group_id: group_id[i].clone(),
                prompt: prompt[i].clone(),
                chosen: chosen[i].clone(),
                rejected: rejected[i].clone(),
                label: label[i],
                margin: margin[i],
                weight: weight[i],
                split: split[i].clone(),
                source: source[i].clone(),
                prompt_tokens: pt[i].clone(),
                chosen_tokens: ct[i].clone(),
                rejected_tokens: rt[i].clone(),
            })
            .collect())
    }
}

impl Record for RatingRow {
    const ARTIFACT: Artifact = Artifact::Ratings;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.rating_id.as_str())),
                strs(rows.iter().map(|r| r.prompt_id.as_str())),
                strs(rows.iter().map(|r| r.prompt.as_str())),
                strs(rows.iter().map(|r| r.response.as_str())),
                Arc::new(Float32Array::from_iter_values(
                    rows.iter().map(|r| r.rating),
                )),
                strs(rows.iter().map(|r| r.split.as_str())),
                strs(rows.iter().map(|r| r.source.as_str())),
                tokens(rows.iter().map(|r| r.prompt_tokens.as_ref())),
                tokens(rows.iter().map(|r| r.response_tokens.as_ref())),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let rating_id = c.str("rating_id")?;
        let prompt_id = c.str("prompt_id")?;
        let prompt = c.str("prompt")?;
        let response = c.str("response")?;
        let rating = c.f32("rating")?;
        let split = c.str("split")?;
        let source = c.str("source")?;
        let pt = c.opt_tokens("prompt_tokens");
        let rt = c.opt_tokens("response_tokens");
        Ok((0..b.num_rows())
            .map(|i| RatingRow {
                rating_id: rating_id[i].clone(),
                prompt_id: prompt_id[i].clone(),
                prompt: prompt[i].clone(),
                response: response[i].clone(),
                rating: rating[i],
                split: split[i].clone(),
                source: source[i].clone(),
                prompt_tokens: pt[i].clone(),
                response_tokens: rt[i].clone(),
            })
            .collect())
    }
}

impl Record for SftRow {
    const ARTIFACT: Artifact = Artifact::Sft;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.sft_id.as_str())),
                strs(rows.iter().map(|r| r.prompt_id.as_str())),
                strs(rows.iter().map(|r| r.prompt.as_str())),
                strs(rows.iter().map(|r| r.completion.as_str())),
                messages(rows.iter().map(|r| r.messages.as_ref())),
                strs(rows.iter().map(|r| r.split.as_str())),
                strs(rows.iter().map(|r| r.source.as_str())),
                tokens(rows.iter().map(|r| r.prompt_tokens.as_ref())),
                tokens(rows.iter().map(|r| r.completion_tokens.as_ref())),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let sft_id = c.str("sft_id")?;
        let prompt_id = c.str("prompt_id")?;
        let prompt = c.str("prompt")?;
        let completion = c.str("completion")?;
        let msgs = c.opt_messages("messages");
        let split = c.str("split")?;
        let source = c.str("source")?;
        let pt = c.opt_tokens("prompt_tokens");
        let ct = c.opt_tokens("completion_tokens");
        Ok((0..b.num_rows())
            .map(|i| SftRow {
                sft_id: sft_id[i].clone(),
                prompt_id: prompt_id[i].clone(),
                prompt: prompt[i].clone(),
                completion: completion[i].clone(),
                messages: msgs[i].clone(),
                split: split[i].clone(),
                source: source[i].clone(),
                prompt_tokens: pt[i].clone(),
                completion_tokens: ct[i].clone(),
            })
            .collect())
    }
}

impl Record for RolloutRow {
    const ARTIFACT: Artifact = Artifact::Rollouts;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.rollout_id.as_str())),
                strs(rows.iter().map(|r| r.prompt_id.as_str())),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.iteration),
                )),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.sample_index),
                )),
                strs(rows.iter().map(|r| r.prompt.as_str())),
                strs(rows.iter().map(|r| r.response.as_str())),
                tokens(rows.iter().map(|r| Some(&r.prompt_tokens))),
                tokens(rows.iter().map(|r| Some(&r.response_tokens))),
                floats(rows.iter().map(|r| Some(&r.logprobs))),
                floats(rows.iter().map(|r| r.ref_logprobs.as_ref())),
                strs(rows.iter().map(|r| r.finish_reason.as_str())),
                strs(rows.iter().map(|r| r.policy_id.as_str())),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seed))),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let rollout_id = c.str("rollout_id")?;
        let prompt_id = c.str("prompt_id")?;
        let iteration = c.i32("iteration")?;
        let sample_index = c.i32("sample_index")?;
        let prompt = c.str("prompt")?;
        let response = c.str("response")?;
        let pt = c.tokens("prompt_tokens")?;
        let rt = c.tokens("response_tokens")?;
        let lp = c.floats("logprobs")?;
        let rlp = c.opt_floats("ref_logprobs");
        let finish = c.str("finish_reason")?;
        let policy = c.str("policy_id")?;
        let seed = c.u64("seed")?;
        let rows: Vec<RolloutRow> = (0..b.num_rows())
            .map(|i| RolloutRow {
                rollout_id: rollout_id[i].clone(),
                prompt_id: prompt_id[i].clone(),
                iteration: iteration[i],
                sample_index: sample_index[i],
                prompt: prompt[i].clone(),
                response: response[i].clone(),
                prompt_tokens: pt[i].clone(),
                response_tokens: rt[i].clone(),
                logprobs: lp[i].clone(),
                ref_logprobs: rlp[i].clone(),
                finish_reason: finish[i].clone(),
                policy_id: policy[i].clone(),
                seed: seed[i],
            })
            .collect();
        for (i, r) in rows.iter().enumerate() {
            let ref_len = r
                .ref_logprobs
                .as_ref()
                .map_or(r.response_tokens.len(), Vec::len);
            if r.logprobs.len() != r.response_tokens.len() || ref_len != r.response_tokens.len() {
                return Err(c.bad(
                    Some(i),
                    format!(
                        "rollout {}: {} response tokens but {} logprobs and {} ref_logprobs",
                        r.rollout_id,
                        r.response_tokens.len(),
                        r.logprobs.len(),
                        ref_len
                    ),
                ));
            }
        }
        Ok(rows)
    }
}

impl Record for MetricRow {
    const ARTIFACT: Artifact = Artifact::Metrics;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.stage.as_str())),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.iteration),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.step))),
                strs(rows.iter().map(|r| r.metric.as_str())),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let stage = c.str("stage")?;
        let iteration = c.i32("iteration")?;
        let step = c.i64("step")?;
        let metric = c.str("metric")?;
        let value = c.f64("value")?;
        Ok((0..b.num_rows())
            .map(|i| MetricRow {
                stage: stage[i].clone(),
                iteration: iteration[i],
                step: step[i],
                metric: metric[i].clone(),
                value: value[i],
            })
            .collect())
    }
}

impl Record for RejectRow {
    const ARTIFACT: Artifact = Artifact::Rejects;

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        batch(
            Self::ARTIFACT,
            vec![
                strs(rows.iter().map(|r| r.source_file.as_str())),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| r.row_number),
                )),
                strs(rows.iter().map(|r| r.reason.as_str())),
                strs(rows.iter().map(|r| r.row.as_str())),
            ],
        )
    }

    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<Self>> {
        let c = Columns::new(b, path);
        let source_file = c.str("source_file")?;
        let row_number = c.i64("row_number")?;
        let reason = c.str("reason")?;
        let row = c.str("row")?;
        Ok((0..b.num_rows())
            .map(|i| RejectRow {
                source_file: source_file[i].clone(),
                row_number: row_number[i],
                reason: reason[i].clone(),
                row: row[i].clone(),
            })
            .collect())
    }
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
            strs(self.rollout_id.iter().map(String::as_str)),
            Arc::new(Float32Array::from(self.reward.clone())),
            Arc::new(Float32Array::from(self.penalty.clone())),
        ];
        for (name, values) in &self.sources {
            fields.push(Field::new(name, DataType::Float32, true));
            cols.push(Arc::new(values.iter().copied().collect::<Float32Array>()));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| CoreError::parquet("building a batch for", "<scores>", e))
    }

    /// Reads a batch; every float column beyond the required ones is a source.
    pub fn append_batch(&mut self, b: &RecordBatch, path: &Path) -> Result<()> {
        let c = Columns::new(b, path);
        let start = self.rollout_id.len();
        self.rollout_id.extend(c.str("rollout_id")?);
        self.reward.extend(c.f32("reward")?);
        self.penalty.extend(c.f32("penalty")?);
        for f in b.schema().fields() {
            let name = f.name();
            if ["rollout_id", "reward", "penalty"].contains(&name.as_str()) {
                continue;
            }
            let values: Vec<Option<f32>> = match f.data_type() {
                DataType::Float32 => c.opt_f32(name),
                DataType::Float64 => {
                    let a = b
                        .column_by_name(name)
                        .map(|a| a.as_primitive::<Float64Type>());
                    match a {
                        Some(a) => (0..a.len())
                            .map(|i| (!a.is_null(i)).then(|| a.value(i) as f32))
                            .collect(),
                        None => continue,
                    }
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
