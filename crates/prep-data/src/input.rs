//! Raw input files: discovery (a file, a folder or a glob), and streaming readers that turn
//! JSONL (plain, .gz, .zst), JSON arrays, CSV/TSV and Parquet into one JSON object per row,
//! handed to a callback so memory stays flat however large the input is.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::PrepError;
use crate::reject::Reason;

/// The container format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Jsonl,
    Json,
    Csv,
    Tsv,
    Parquet,
}

/// Compression of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One input file and how to read it.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: FileKind,
    pub compression: Compression,
}

/// One row of an input file: its 1-based number, its text (for rejects) and its parsed
/// value, or why it could not be parsed.
pub struct RawRow<'a> {
    pub file: &'a Path,
    pub row: usize,
    pub text: String,
    pub value: Result<Value, (Reason, String)>,
}

/// Classifies a path by its extension (after stripping .gz / .zst).
pub fn classify(path: &Path) -> Result<InputFile, PrepError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Compression::Gzip)
    } else if let Some(s) = name
        .strip_suffix(".zst")
        .or_else(|| name.strip_suffix(".zstd"))
    {
        (s.to_string(), Compression::Zstd)
    } else {
        (name.clone(), Compression::None)
    };
    let kind = match stem.rsplit('.').next().unwrap_or("") {
        "jsonl" | "ndjson" => FileKind::Jsonl,
        "json" => FileKind::Json,
        "csv" => FileKind::Csv,
        "tsv" => FileKind::Tsv,
        "parquet" if compression == Compression::None => FileKind::Parquet,
        _ => {
            return Err(PrepError::input(
                path,
                None,
                "unknown file type; expected .jsonl, .json, .csv, .tsv or .parquet (JSONL, JSON and CSV may end in .gz or .zst)",
            ))
        }
    };
    Ok(InputFile {
        path: path.to_path_buf(),
        kind,
        compression,
    })
}

fn known_extension(path: &Path) -> bool {
    classify(path).is_ok()
}

/// Expands `--input` (a file, a folder, or a glob) into sorted input files.
pub fn resolve(spec: &str) -> Result<Vec<InputFile>, PrepError> {
    let path = Path::new(spec);
    let mut files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| PrepError::unreadable(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && known_extension(p)
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    } else if spec.contains(['*', '?', '[']) {
        glob::glob(spec)
            .map_err(|e| PrepError::Flag(format!("--input {spec}: bad glob: {e}")))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect()
    } else {
        return Err(PrepError::input(path, None, "no such file or folder"));
    };
    files.sort();
    if files.is_empty() {
        return Err(PrepError::input(
            path,
            None,
            "no input files found (hint: a folder is searched for .jsonl, .json, .csv, .tsv, .parquet files, optionally .gz/.zst)",
        ));
    }
    files.iter().map(|p| classify(p)).collect()
}

fn open(file: &InputFile) -> Result<Box<dyn Read>, PrepError> {
    let f = File::open(&file.path).map_err(|e| PrepError::unreadable(&file.path, e))?;
    Ok(match file.compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(f)
                .map_err(|e| PrepError::unreadable(&file.path, e))?,
        ),
    })
}

/// Streams every row of `file` to `each`. A row that cannot be parsed is handed over with
/// its reason; a file that cannot be read at all is an error naming the file and row.
pub fn for_each_row(
    file: &InputFile,
    each: &mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match file.kind {
        FileKind::Jsonl => read_jsonl(file, open(file)?, each),
        FileKind::Json => read_json(file, each),
        FileKind::Csv | FileKind::Tsv => read_csv(file, each),
        FileKind::Parquet => read_parquet(file, each),
    }
}

fn parse_object(text: &str) -> Result<Value, (Reason, String)> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err((
            Reason::MalformedRow,
            format!("expected a JSON object, found {}", type_of(&other)),
        )),
        Err(e) => Err((Reason::MalformedRow, format!("malformed JSON: {e}"))),
    }
}

/// A JSON type's name for messages.
pub fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_jsonl(
    file: &InputFile,
    reader: Box<dyn Read>,
    each: &mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::new();
    let mut row = 0usize;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| {
            PrepError::input(&file.path, Some(row + 1), format!("read failed: {e}"))
        })?;
        if n == 0 {
            return Ok(());
        }
        row += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                each(RawRow {
                    file: &file.path,
                    row,
                    text: String::from_utf8_lossy(&buf).trim_end().to_string(),
                    value: Err((Reason::MalformedRow, format!("not UTF-8: {e}"))),
                })?;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue; // blank lines (e.g. a trailing newline) are not rows
        }
        let value = parse_object(&text);
        each(RawRow {
            file: &file.path,
            row,
            text,
            value,
        })?;
    }
}

/// Visits the elements of a top-level JSON array one at a time.
struct ArrayVisitor<'f, 'c> {
    path: &'f Path,
    each: &'c mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
    failure: Option<anyhow::Error>,
}

impl<'de> Visitor<'de> for &mut ArrayVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut row = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            row += 1;
            let text = v.to_string();
            let value = match v {
                Value::Object(_) => Ok(v),
                other => Err((
                    Reason::MalformedRow,
                    format!("expected a JSON object, found {}", type_of(&other)),
                )),
            };
            if let Err(e) = (self.each)(RawRow {
                file: self.path,
                row,
                text,
                value,
            }) {
                self.failure = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

fn read_json(
    file: &InputFile,
    each: &mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, open(file)?);
    // A .json file holding one object per line is JSONL.
    let first = loop {
        let b = reader
            .fill_buf()
            .map_err(|e| PrepError::unreadable(&file.path, e))?;
        match b.first() {
            None => break None,
            Some(c) if c.is_ascii_whitespace() => reader.consume(1),
            Some(c) => break Some(*c),
        }
    };
    match first {
        None => Ok(()),
        Some(b'{') => read_jsonl(file, Box::new(reader), each),
        Some(b'[') => {
            let mut visitor = ArrayVisitor {
                path: &file.path,
                each,
                failure: None,
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            let result = (&mut de).deserialize_seq(&mut visitor);
            if let Some(e) = visitor.failure.take() {
                return Err(e);
            }
            result.map_err(|e| {
                PrepError::input(
                    &file.path,
                    None,
                    format!(
                        "malformed JSON array at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                )
            })?;
            Ok(())
        }
        Some(c) => Err(PrepError::input(
            &file.path,
            None,
            format!("expected a JSON array or JSON lines, found `{}`", c as char),
        )
        .into()),
    }
}

fn read_csv(
    file: &InputFile,
    each: &mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if file.kind == FileKind::Tsv {
            b'\t'
        } else {
            b','
        })
        .flexible(false)
        .from_reader(open(file)?);
    let headers = reader
        .headers()
        .map_err(|e| PrepError::input(&file.path, Some(1), format!("unreadable CSV header: {e}")))?
        .clone();
    let mut row = 0usize;
    for record in reader.records() {
        row += 1;
        match record {
            Ok(rec) => {
                let mut obj = Map::new();
                for (h, v) in headers.iter().zip(rec.iter()) {
                    obj.insert(h.to_string(), Value::String(v.to_string()));
                }
                let value = Value::Object(obj);
                each(RawRow {
                    file: &file.path,
                    row,
                    text: value.to_string(),
                    value: Ok(value),
                })?;
            }
            Err(e) if matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) => each(RawRow {
                file: &file.path,
                row,
                text: String::new(),
                value: Err((Reason::MalformedRow, format!("malformed CSV: {e}"))),
            })?,
            Err(e) => {
                return Err(
                    PrepError::input(&file.path, Some(row), format!("unreadable CSV: {e}")).into(),
                )
            }
        }
    }
    Ok(())
}

fn read_parquet(
    file: &InputFile,
    each: &mut dyn FnMut(RawRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let unreadable = |e: String| {
        PrepError::input(
            &file.path,
            None,
            format!("not a readable Parquet file: {e}"),
        )
    };
    // The footer's column chunks checked against the file first (a damaged one panics parquet).
    let builder =
        rlhf_core::parquet_io::open_parquet(&file.path).map_err(|e| unreadable(e.to_string()))?;
    let reader = builder
        .with_batch_size(4096)
        .build()
        .map_err(|e| unreadable(e.to_string()))?;
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| {
            PrepError::input(
                &file.path,
                Some(row + 1),
                format!("unreadable Parquet data: {e}"),
            )
        })?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            row += 1;
            let mut obj = Map::new();
            for (field, col) in schema.fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), cell(col.as_ref(), i));
            }
            let value = Value::Object(obj);
            each(RawRow {
                file: &file.path,
                row,
                text: value.to_string(),
                value: Ok(value),
            })?;
        }
    }
    Ok(())
}

/// One Arrow cell as JSON (strings, numbers, booleans, lists and structs; other types as
/// their display text).
fn cell(a: &dyn Array, i: usize) -> Value {
    use arrow::datatypes::*;
    if a.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            serde_json::json!(a.as_primitive::<$t>().value(i))
        };
    }
    match a.data_type() {
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_string()),
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => num!(Float32Type),
        DataType::Float64 => num!(Float64Type),
        DataType::List(_) => {
            let v = a.as_list::<i32>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j)).collect())
        }
        DataType::LargeList(_) => {
            let v = a.as_list::<i64>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j)).collect())
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut obj = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(c.as_ref(), i));
            }
            Value::Object(obj)
        }
        _ => {
            let fmt = arrow::util::display::ArrayFormatter::try_new(a, &Default::default());
            match fmt {
                Ok(f) => Value::String(f.value(i).to_string()),
                Err(_) => Value::Null,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_extension() {
        let k = |p: &str| classify(Path::new(p)).map(|f| (f.kind, f.compression));
        assert_eq!(
            k("a/x.jsonl.gz").unwrap(),
            (FileKind::Jsonl, Compression::Gzip)
        );
        assert_eq!(k("x.JSON").unwrap(), (FileKind::Json, Compression::None));
        assert_eq!(k("x.csv.zst").unwrap(), (FileKind::Csv, Compression::Zstd));
        assert_eq!(
            k("x.parquet").unwrap(),
            (FileKind::Parquet, Compression::None)
        );
        let err = k("notes.txt").unwrap_err().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("unknown file type"),
            "{err}"
        );
    }
}
