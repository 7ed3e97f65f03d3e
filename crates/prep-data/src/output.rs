//! The output folder of `convert`: one buffered sink per artifact (flushed every few
//! thousand rows, so memory stays flat), exact-duplicate removal by content id, prompts
//! collected from every example, and the rejects file with a `detail` column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rlhf_core::hash::content_id;
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::ArtifactWriter;
use rlhf_core::records::{Record, RejectRow};
use rlhf_core::schema::Artifact;
use rlhf_core::shard::Shard;

use crate::reject::{Rejection, Summary};

/// Rows buffered per sink before a batch is written.
pub const FLUSH_ROWS: usize = 4096;

/// A typed row sink for one artifact file.
pub struct Sink<R: Record> {
    file_name: &'static str,
    path: PathBuf,
    lineage: Lineage,
    writer: Option<ArtifactWriter>,
    buf: Vec<R>,
    rows: u64,
    always: bool,
}

impl<R: Record> Sink<R> {
    /// A sink writing `file_name` in `dir` (a part file inside it when sharded). With
    /// `always`, the file is written even when empty.
    pub fn new(
        dir: &Path,
        file_name: &'static str,
        shard: Shard,
        lineage: &Lineage,
        always: bool,
    ) -> Self {
        Sink {
            file_name,
            path: shard.output_path(&dir.join(file_name)),
            lineage: lineage.for_artifact(R::ARTIFACT),
            writer: None,
            buf: Vec::new(),
            rows: 0,
            always,
        }
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a row.
    pub fn push(&mut self, row: R) -> anyhow::Result<()> {
        self.buf.push(row);
        self.rows += 1;
        if self.buf.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.writer.is_none() {
            self.writer = Some(ArtifactWriter::create(
                &self.path,
                R::ARTIFACT,
                R::ARTIFACT.schema(),
                &self.lineage,
            )?);
        }
        if !self.buf.is_empty() {
            let batch = R::to_batch(&self.buf)?;
            if let Some(w) = self.writer.as_mut() {
                w.write(&batch)?;
            }
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is left and renames the file into place; records the count.
    pub fn finish(mut self, summary: &mut Summary) -> anyhow::Result<()> {
        if self.rows > 0 || self.always {
            self.flush()?;
        }
        if let Some(w) = self.writer.take() {
            w.finish()?;
            summary
                .written
                .insert(self.file_name.to_string(), self.rows);
        }
        Ok(())
    }
}

/// Rejects with a `detail` column beside the required ones.
pub struct RejectSink {
    path: PathBuf,
    lineage: Lineage,
    writer: Option<ArtifactWriter>,
    buf: Vec<(RejectRow, String)>,
}

fn reject_schema() -> SchemaRef {
    let mut fields: Vec<Field> = Artifact::Rejects
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("detail", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

impl RejectSink {
    /// The rejects file at `path` (a part file inside it when sharded).
    pub fn new(path: &Path, shard: Shard, lineage: &Lineage) -> Self {
        RejectSink {
            path: shard.output_path(path),
            lineage: lineage.for_artifact(Artifact::Rejects),
            writer: None,
            buf: Vec::new(),
        }
    }

    /// Records a rejected row.
    pub fn push(
        &mut self,
        file: &Path,
        row: usize,
        text: &str,
        r: &Rejection,
    ) -> anyhow::Result<()> {
        self.buf.push((
            RejectRow {
                source_file: file.display().to_string(),
                row_number: row as i64,
                reason: r.reason.code().to_string(),
                row: text.to_string(),
            },
            r.detail.clone(),
        ));
        if self.buf.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.writer.is_none() {
            self.writer = Some(ArtifactWriter::create(
                &self.path,
                Artifact::Rejects,
                reject_schema(),
                &self.lineage,
            )?);
        }
        if !self.buf.is_empty() {
            let rows: Vec<RejectRow> = self.buf.iter().map(|(r, _)| r.clone()).collect();
            let base = RejectRow::to_batch(&rows)?;
            let mut cols: Vec<ArrayRef> = base.columns().to_vec();
            cols.push(Arc::new(StringArray::from_iter_values(
                self.buf.iter().map(|(_, d)| d.as_str()),
            )));
            let batch = RecordBatch::try_new(reject_schema(), cols)?;
            if let Some(w) = self.writer.as_mut() {
                w.write(&batch)?;
            }
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the file (always, even empty).
    pub fn finish(mut self, summary: &mut Summary) -> anyhow::Result<()> {
        self.flush()?;
        if let Some(w) = self.writer.take() {
            let n = w.finish()?;
            let name = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            summary.written.insert(name, n as u64);
        }
        Ok(())
    }
}

/// Remembers content ids already written, for exact-duplicate removal: 8 bytes per id
/// (plus hash-table slack), one table per kind. This is the only memory that grows with
/// the input.
#[derive(Default)]
pub struct SeenIds(Vec<HashSet<u64>>);

impl SeenIds {
    /// True when `id` (a 16-hex content id) of kind `kind` is new; records it.
    pub fn insert(&mut self, kind: u8, id: &str) -> bool {
        let v = u64::from_str_radix(id, 16)
            .unwrap_or_else(|_| u64::from_str_radix(&content_id(&[id]), 16).unwrap_or(0));
        let k = kind as usize;
        if self.0.len() <= k {
            self.0.resize_with(k + 1, HashSet::new);
        }
        self.0[k].insert(v)
    }
}
