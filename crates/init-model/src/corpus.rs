//! The tokenizer's training text: one or more string columns of any Parquet file (a
//! file, a folder of part files, or a glob), read in file and row order. Null and empty
//! values are counted and skipped (they carry no text to learn merges from).

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use rlhf_core::error::{CoreError, Result};
use rlhf_core::parquet_io::resolve_inputs;

/// Text read from a corpus, with counts for the log.
#[derive(Debug, Default)]
pub struct Corpus {
    /// Non-empty texts in file, row, column order.
    pub texts: Vec<String>,
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Rows read (over all files).
    pub rows: usize,
    /// Values that were null or empty, per column name.
    pub skipped_empty: usize,
}

impl Corpus {
    /// Total characters of text.
    pub fn chars(&self) -> usize {
        self.texts.iter().map(|t| t.len()).sum()
    }
}

/// Reads the string columns `columns` of every file named by `spec`.
pub fn read_text_columns(spec: &Path, columns: &[String]) -> Result<Corpus> {
    if columns.is_empty() {
        return Err(CoreError::Usage(
            "give at least one --text-column".to_string(),
        ));
    }
    let files = resolve_inputs(spec)?;
    let mut corpus = Corpus {
        files: files.clone(),
        ..Corpus::default()
    };
    for f in &files {
        read_file(f, columns, &mut corpus)?;
    }
    if corpus.texts.is_empty() {
        return Err(CoreError::BadInput {
            path: spec.to_path_buf(),
            row: None,
            message: format!(
                "no text in column(s) {} ({} rows, all null or empty)",
                columns.join(", "),
                corpus.rows
            ),
        });
    }
    Ok(corpus)
}

fn read_file(path: &Path, columns: &[String], corpus: &mut Corpus) -> Result<()> {
    // Column chunks checked against the file size first (a damaged footer panics parquet).
    let builder = rlhf_core::parquet_io::open_parquet(path)?;
    let schema = builder.schema().clone();
    let mut indices = Vec::with_capacity(columns.len());
    for name in columns {
        let Some((i, field)) = schema.column_with_name(name) else {
            let available: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| format!("{} ({})", f.name(), f.data_type()))
                .collect();
            return Err(CoreError::BadInput {
                path: path.to_path_buf(),
                row: None,
                message: format!(
                    "no column `{name}`; the file has: {}\n  hint: pick a text column with --text-column",
                    available.join(", ")
                ),
            });
        };
        if !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(CoreError::BadInput {
                path: path.to_path_buf(),
                row: None,
                message: format!(
                    "column `{name}` has type {}, expected a string type (Utf8)",
                    field.data_type()
                ),
            });
        }
        indices.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| CoreError::parquet("reading", path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| CoreError::parquet("reading", path, e))?;
        push_batch(&batch, columns, corpus, path)?;
    }
    Ok(())
}

fn push_batch(
    batch: &RecordBatch,
    columns: &[String],
    corpus: &mut Corpus,
    path: &Path,
) -> Result<()> {
    let mut per_column: Vec<Vec<Option<String>>> = Vec::with_capacity(columns.len());
    for name in columns {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| CoreError::BadInput {
                path: path.to_path_buf(),
                row: None,
                message: format!("column `{name}` missing from a row group"),
            })?;
        per_column.push(string_values(array.as_ref()));
    }
    for row in 0..batch.num_rows() {
        for values in &per_column {
            match values.get(row).cloned().flatten() {
                Some(text) if !text.is_empty() => corpus.texts.push(text),
                _ => corpus.skipped_empty += 1,
            }
        }
    }
    corpus.rows += batch.num_rows();
    Ok(())
}

fn string_values(array: &dyn Array) -> Vec<Option<String>> {
    match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(String::from))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| v.map(String::from))
            .collect(),
        _ => vec![None; array.len()],
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn write(path: &Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("prompt", DataType::Utf8, true),
            Field::new("completion", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("p1"), None, Some("p3")])),
                Arc::new(StringArray::from(vec![Some("c1"), Some("c2"), Some("")])),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn reads_columns_in_row_order_and_counts_empty_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.parquet");
        write(&path);
        let c = read_text_columns(&path, &["prompt".into(), "completion".into()]).unwrap();
        assert_eq!(c.texts, vec!["p1", "c1", "c2", "p3"]);
        assert_eq!(c.rows, 3);
        assert_eq!(c.skipped_empty, 2);
    }

    #[test]
    fn missing_or_non_text_column_names_the_file_and_the_choices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.parquet");
        write(&path);
        let err = read_text_columns(&path, &["text".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no column `text`"), "{msg}");
        assert!(msg.contains("completion (Utf8)"), "{msg}");
        assert!(err.is_bad_input());
        let err = read_text_columns(&path, &["id".into()]).unwrap_err();
        assert!(err.to_string().contains("has type Int32"), "{err}");
    }
}
