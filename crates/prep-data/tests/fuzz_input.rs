//! Fuzz (proptest) of the raw input readers (`input::for_each_row` for JSONL, JSON, CSV,
//! TSV and Parquet, plain, gzip and zstd): valid files truncated and with flipped bytes (a
//! cut download, a damaged disk), and random bytes under each extension (a wrong file).
//! Each file yields rows, rows rejected as malformed, or an error that is bad input (exit
//! code 3); never a panic. Accepted rows go on through format detection and conversion.
//! `RLHF_FUZZ_CASES` sets the cases per property (default 256; `make fuzz` runs 20,000).

#[path = "../../rlhf-core/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use fuzz_common::{config, corruption};
use prep_data::error::{is_bad_input, is_usage};
use prep_data::formats::{self, FormatOptions, GenericKind};
use prep_data::input::{classify, for_each_row, RawRow};
use proptest::prelude::*;
use rlhf_core::cli::{exit_code_with, EXIT_BAD_INPUT};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{Message, PromptRow};
use rlhf_core::schema::Artifact;
use serde_json::json;

const NAMES: [&str; 8] = [
    "in.jsonl",
    "in.json",
    "in.csv",
    "in.tsv",
    "in.parquet",
    "in.jsonl.gz",
    "in.jsonl.zst",
    "in.csv.gz",
];

fn options() -> FormatOptions {
    FormatOptions {
        kind: GenericKind::Auto,
        prompt_column: "prompt".into(),
        chosen_column: "chosen".into(),
        rejected_column: "rejected".into(),
        response_column: "response".into(),
        rating_column: "rating".into(),
        completion_column: "completion".into(),
        messages_column: "messages".into(),
        reference_column: "reference".into(),
        label_column: None,
        margin_column: None,
        min_score_ratio: None,
    }
}

/// A valid file of each kind in `NAMES` order, a few rows each (made once).
fn valid_files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(make_valid_files)
}

fn make_valid_files() -> Vec<Vec<u8>> {
    let rows = [
        json!({"chosen": "\n\nHuman: Hi\n\nAssistant: A pun.", "rejected": "\n\nHuman: Hi\n\nAssistant: No."}),
        json!({"prompt": "p", "chosen": "c", "rejected": "r"}),
        json!({"prompt": "p", "response": "r", "rating": 0.5}),
    ];
    let jsonl: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let json_array = serde_json::to_vec_pretty(&rows).unwrap();
    let csv = b"prompt,chosen,rejected\np,c,r\n\"q, quoted\",\"a \"\"b\"\"\",x\n".to_vec();
    let tsv = b"prompt\tresponse\trating\np\tr\t1\nq\ts\t0\n".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("p.parquet");
    let prompts = vec![PromptRow {
        prompt_id: "p1".into(),
        prompt: "User: hi\nAssistant:".into(),
        messages: Some(vec![Message::new("user", "hi")]),
        prompt_tokens: Some(vec![1, 2, 3]),
        split: "train".into(),
        source: "test".into(),
        reference: Some("ref".into()),
    }];
    write_records(&pq, &prompts, &Lineage::new("fuzz", "0", Artifact::Prompts)).unwrap();
    let parquet = std::fs::read(&pq).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(jsonl.as_bytes()).unwrap();
    let zst = zstd::encode_all(jsonl.as_bytes(), 3).unwrap();
    let mut csv_gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    csv_gz.write_all(&csv).unwrap();
    vec![
        jsonl.into_bytes(),
        json_array,
        csv,
        tsv,
        parquet,
        gz.finish().unwrap(),
        zst,
        csv_gz.finish().unwrap(),
    ]
}

/// Reads `bytes` as a file named `name`; every row goes through detection and conversion.
/// Returns the number of rows seen.
fn read(dir: &Path, name: &str, bytes: &[u8]) -> Result<usize, TestCaseError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let file = classify(&path).unwrap();
    let opts = options();
    let mut rows = 0;
    let result = for_each_row(&file, &mut |raw: RawRow<'_>| {
        rows += 1;
        if let Ok(v) = &raw.value {
            if let Some(f) = formats::detect(v, &opts) {
                formats::convert(f, v, &opts);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        let code = exit_code_with(&e, &[is_bad_input], &[is_usage]);
        prop_assert_eq!(code, EXIT_BAD_INPUT, "{}: {:#}", name, e);
    }
    Ok(rows)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn corrupted_files_give_rows_or_bad_input(kind in 0..NAMES.len(), c in corruption()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = c.apply(&valid_files()[kind]);
        read(dir.path(), NAMES[kind], &bytes)?;
    }

    #[test]
    fn random_bytes_give_rows_or_bad_input(
        kind in 0..NAMES.len(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let dir = tempfile::tempdir().unwrap();
        read(dir.path(), NAMES[kind], &bytes)?;
    }
}

#[test]
fn valid_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in NAMES.iter().zip(valid_files()) {
        let rows = read(dir.path(), name, bytes).unwrap();
        assert!(rows >= 1, "{name}: {rows} rows");
    }
}

// Regression: one damaged byte in a Parquet footer (a column chunk offset that reads as
// negative) made the parquet crate panic while reading pages. Every byte of the footer up
// to its key-value metadata (text) overwritten so now gives rows or bad input, and some
// are caught by the column-chunk check.
#[test]
fn one_damaged_parquet_footer_byte_is_bad_input_not_a_panic() {
    let valid = &valid_files()[4];
    let n = valid.len();
    let footer_len = u32::from_le_bytes(valid[n - 8..n - 4].try_into().unwrap()) as usize;
    let start = n - 8 - footer_len;
    let key = b"rlhf.lineage";
    let end = valid[start..]
        .windows(key.len())
        .position(|w| w == key)
        .map_or(n - 8, |i| start + i);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.parquet");
    let file = classify(&path).unwrap();
    let mut caught = 0;
    for pos in start..end {
        let mut bytes = valid.clone();
        bytes[pos] = 73;
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = for_each_row(&file, &mut |_| Ok(())) {
            let code = exit_code_with(&e, &[is_bad_input], &[is_usage]);
            assert_eq!(code, EXIT_BAD_INPUT, "byte {pos}: {e:#}");
            caught += usize::from(format!("{e:#}").contains("corrupt Parquet footer"));
        }
    }
    assert!(caught > 0);
}
