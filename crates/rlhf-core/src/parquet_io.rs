//! Parquet reading and writing for artifacts. Writers use zstd, explicit row-group sizes,
//! lineage in the footer, and an atomic rename. Readers take a file, a folder of part
//! files or a glob, and check each file's schema before reading any row.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;

use crate::atomic::{ensure_parent, sweep, temp_sibling};
use crate::error::{CoreError, Result};
use crate::lineage::{Lineage, LINEAGE_KEY};
use crate::parts;
use crate::schema::{check_schema, schema_line, Artifact};
use crate::signals;

/// Rows per row group: small for artifacts with wide list columns, larger otherwise.
pub fn row_group_size(artifact: Artifact) -> usize {
    match artifact {
        Artifact::Rollouts => 1024,
        Artifact::Preferences | Artifact::Ratings | Artifact::Sft | Artifact::Prompts => 8192,
        _ => 65536,
    }
}

/// Writes one artifact file: batches go to a temporary sibling that `finish` renames onto
/// the target. Dropped without `finish`, the temporary file is removed.
pub struct ArtifactWriter {
    writer: Option<ArrowWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
    rows: usize,
}

impl ArtifactWriter {
    /// Starts writing `artifact` rows with `schema` (the artifact's schema, possibly with
    /// extra nullable columns) to `target`.
    pub fn create(
        target: &Path,
        artifact: Artifact,
        schema: SchemaRef,
        lineage: &Lineage,
    ) -> Result<ArtifactWriter> {
        if let Err(detail) = check_schema(artifact, &schema) {
            return Err(CoreError::SchemaMismatch {
                path: target.to_path_buf(),
                artifact: artifact.name().into(),
                detail,
                expected: schema_line(&artifact.schema()),
                found: schema_line(&schema),
            });
        }
        ensure_parent(target)?;
        parts::check_writable_part(target, lineage)?;
        sweep(target)?;
        let tmp = temp_sibling(target);
        signals::register_temporary(&tmp);
        let file = File::create(&tmp).map_err(|e| {
            signals::unregister_temporary(&tmp);
            CoreError::io("creating", &tmp, e)
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .set_max_row_group_row_count(Some(row_group_size(artifact)))
            .set_created_by("perl-rlhf".to_string())
            .set_key_value_metadata(Some(vec![
                KeyValue::new(LINEAGE_KEY.to_string(), lineage.to_json()),
                KeyValue::new("rlhf.schema".to_string(), artifact.name().to_string()),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(props))
            .map_err(|e| CoreError::parquet("starting", &tmp, e))?;
        Ok(ArtifactWriter {
            writer: Some(writer),
            tmp,
            target: target.to_path_buf(),
            rows: 0,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)
                .map_err(|e| CoreError::parquet("writing", &self.tmp, e))?;
            self.rows += batch.num_rows();
        }
        Ok(())
    }

    /// Closes the file and renames it onto the target. Returns the number of rows.
    pub fn finish(mut self) -> Result<usize> {
        let result = self.close_and_rename();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        signals::unregister_temporary(&self.tmp);
        result
    }

    fn close_and_rename(&mut self) -> Result<usize> {
        if let Some(w) = self.writer.take() {
            let file = w
                .into_inner()
                .map_err(|e| CoreError::parquet("closing", &self.tmp, e))?;
            file.sync_all()
                .map_err(|e| CoreError::io("syncing", &self.tmp, e))?;
        }
        signals::renaming(|| {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| CoreError::io("renaming into", &self.target, e))?;
            signals::unregister_temporary(&self.tmp);
            Ok(self.rows)
        })
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
            signals::unregister_temporary(&self.tmp);
        }
    }
}

/// Writes one batch as a complete artifact file.
pub fn write_batch(
    target: &Path,
    artifact: Artifact,
    batch: &RecordBatch,
    lineage: &Lineage,
) -> Result<usize> {
    let mut w = ArtifactWriter::create(target, artifact, batch.schema(), lineage)?;
    w.write(batch)?;
    w.finish()
}

/// Expands an input spec (a file, a folder of `.parquet` part files, or a glob) into the
/// sorted list of files it names. Part files (`part-I-of-N.parquet`) must be complete: all
/// N parts of one N, or the spec is refused naming what is missing or foreign.
pub fn resolve_inputs(spec: &Path) -> Result<Vec<PathBuf>> {
    let text = spec.to_string_lossy();
    let mut files: Vec<PathBuf> = if spec.is_file() {
        vec![spec.to_path_buf()]
    } else if spec.is_dir() {
        std::fs::read_dir(spec)
            .map_err(|e| CoreError::io("listing", spec, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "parquet")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    } else if text.contains(['*', '?', '[']) {
        glob::glob(&text)
            .map_err(|e| CoreError::Usage(format!("bad glob {text}: {e}")))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect()
    } else {
        return Err(CoreError::io(
            "reading",
            spec,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    };
    files.sort();
    if files.is_empty() {
        return Err(CoreError::NoInput {
            pattern: text.to_string(),
        });
    }
    if !spec.is_file() {
        // A folder or a glob: its part files must form one complete set. A part file
        // named on its own is read as the user asks.
        parts::check_complete(spec, &files)?;
    }
    Ok(files)
}

/// Opens a Parquet file for reading: its footer parsed, and every column chunk's byte range
/// checked against the file ([`check_column_chunks`]) before any page is read.
pub fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| CoreError::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| CoreError::io("reading", path, e))?
        .len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| CoreError::parquet("reading footer of", path, e))?;
    check_column_chunks(builder.metadata(), len).map_err(|message| CoreError::BadInput {
        path: path.to_path_buf(),
        row: None,
        message,
    })?;
    Ok(builder)
}

/// Checks that every column chunk of a footer lies within the file's `file_len` bytes: the
/// parquet crate panics on a negative offset or size (`ColumnChunkMetaData::byte_range`),
/// which one damaged byte in a footer can produce. The error is a message for the caller.
fn check_column_chunks(meta: &ParquetMetaData, file_len: u64) -> std::result::Result<(), String> {
    for (i, rg) in meta.row_groups().iter().enumerate() {
        for c in rg.columns() {
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let len = c.compressed_size();
            let end = start.checked_add(len);
            if start < 0 || len < 0 || end.is_none_or(|e| e as u64 > file_len) {
                return Err(format!(
                    "corrupt Parquet footer: column `{}` of row group {i} claims {len} bytes at \
                     offset {start} of a {file_len}-byte file",
                    c.column_path()
                ));
            }
        }
    }
    Ok(())
}

/// Reads the lineage stored in a Parquet file's footer, if any.
pub fn read_lineage(path: &Path) -> Result<Option<Lineage>> {
    let file = File::open(path).map_err(|e| CoreError::io("opening", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| CoreError::parquet("reading footer of", path, e))?;
    let kv = builder.metadata().file_metadata().key_value_metadata();
    match kv.and_then(|kv| kv.iter().find(|k| k.key == LINEAGE_KEY)) {
        Some(KeyValue {
            value: Some(text), ..
        }) => Ok(Some(Lineage::from_json(text, path)?)),
        _ => Ok(None),
    }
}

/// A dataset of one artifact kind spread over one or more files, schema-checked up front.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub artifact: Artifact,
    pub files: Vec<PathBuf>,
    pub lineages: Vec<Option<Lineage>>,
}

impl Dataset {
    /// Resolves `spec` and checks every file's schema against `artifact`.
    pub fn open(spec: &Path, artifact: Artifact) -> Result<Dataset> {
        let files = resolve_inputs(spec)?;
        let mut lineages = Vec::with_capacity(files.len());
        for f in &files {
            let builder = open_parquet(f)?;
            if let Err(detail) = check_schema(artifact, builder.schema()) {
                return Err(CoreError::SchemaMismatch {
                    path: f.clone(),
                    artifact: artifact.name().into(),
                    detail,
                    expected: schema_line(&artifact.schema()),
                    found: schema_line(builder.schema()),
                });
            }
            lineages.push(read_lineage(f)?);
        }
        if !spec.is_file() {
            parts::check_one_run(spec, &files, &lineages)?;
        }
        Ok(Dataset {
            artifact,
            files,
            lineages,
        })
    }

    /// The tokenizer hash recorded by the files, when all that record one agree.
    pub fn tokenizer_hash(&self) -> Result<Option<String>> {
        let mut found: Option<(String, &Path)> = None;
        for (l, f) in self.lineages.iter().zip(&self.files) {
            if let Some(h) = l.as_ref().and_then(|l| l.tokenizer_hash.clone()) {
                match &found {
                    Some((h0, f0)) if *h0 != h => {
                        return Err(CoreError::Mismatch {
                            what: "tokenizer",
                            left_name: f0.display().to_string(),
                            left: h0.clone(),
                            right_name: f.display().to_string(),
                            right: h,
                            hint: "all part files of a dataset must come from one tokenizer".into(),
                        })
                    }
                    None => found = Some((h, f)),
                    _ => {}
                }
            }
        }
        Ok(found.map(|(h, _)| h))
    }

    /// Every batch of every file, in file order.
    pub fn batches(&self) -> impl Iterator<Item = Result<(PathBuf, RecordBatch)>> + '_ {
        self.files.iter().flat_map(|f| {
            let reader = open_parquet(f).and_then(|b| {
                b.with_batch_size(8192)
                    .build()
                    .map_err(|e| CoreError::parquet("reading", f, e))
            });
            let items: Box<dyn Iterator<Item = Result<(PathBuf, RecordBatch)>>> = match reader {
                Ok(r) => Box::new(r.map(move |b| {
                    b.map(|b| (f.clone(), b))
                        .map_err(|e| CoreError::parquet("reading", f, e))
                })),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            items
        })
    }

    /// Reads all rows as typed records.
    pub fn read_all<R: crate::records::Record>(&self) -> Result<Vec<R>> {
        let mut out = Vec::new();
        for item in self.batches() {
            let (path, batch) = item?;
            out.extend(R::from_batch(&batch, &path)?);
        }
        Ok(out)
    }
}

/// Opens `spec` as `R`'s artifact and reads every row.
pub fn read_records<R: crate::records::Record>(spec: &Path) -> Result<(Vec<R>, Dataset)> {
    let ds = Dataset::open(spec, R::ARTIFACT)?;
    let rows = ds.read_all()?;
    Ok((rows, ds))
}

/// Writes typed records as one artifact file.
pub fn write_records<R: crate::records::Record>(
    target: &Path,
    rows: &[R],
    lineage: &Lineage,
) -> Result<usize> {
    let mut w = ArtifactWriter::create(target, R::ARTIFACT, R::ARTIFACT.schema(), lineage)?;
    for chunk in rows.chunks(row_group_size(R::ARTIFACT)) {
        w.write(&R::to_batch(chunk)?)?;
    }
    w.finish()
}
