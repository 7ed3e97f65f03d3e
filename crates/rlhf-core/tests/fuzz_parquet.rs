//! Fuzz (proptest) of the artifact readers on corrupted files: valid prompts, preferences
//! and rollouts files (written with `write_records`) truncated at random lengths and with
//! random bytes overwritten (anywhere, in the leading magic, in the footer and its lineage
//! JSON), and random bytes. `read_records`, `Dataset::open` and `read_lineage` return rows
//! (a change that leaves the file readable) or an error whose `is_bad_input()` is true (exit
//! code 3), never a panic; a truncated file is always an error.
//! `RLHF_FUZZ_CASES` sets the cases per property (default 256; `make fuzz` runs 20,000).

mod fuzz_common;

use std::path::Path;
use std::sync::OnceLock;

use fuzz_common::{config, corruption};
use proptest::prelude::*;
use rlhf_core::lineage::{Lineage, LINEAGE_KEY};
use rlhf_core::parquet_io::{read_lineage, read_records, write_records, Dataset};
use rlhf_core::records::{Message, PreferenceRow, PromptRow, Record, RolloutRow};
use rlhf_core::CoreError;

fn lineage<R: Record>() -> Lineage {
    let mut l = Lineage::new("fuzz", "0.1.0", R::ARTIFACT).with_tokenizer(Some("0123abcd".into()));
    l.args = vec!["--seed".into(), "1".into()];
    l
}

fn prompts() -> Vec<PromptRow> {
    (0..40)
        .map(|i| PromptRow {
            prompt_id: format!("p{i}"),
            prompt: format!("User: question {i} \u{1f600}\nAssistant:"),
            messages: (i % 3 != 0).then(|| vec![Message::new("user", &format!("question {i}"))]),
            prompt_tokens: (i % 2 == 0).then(|| (0..i).collect()),
            split: if i % 5 == 0 { "eval" } else { "train" }.into(),
            source: "fuzz".into(),
            reference: (i % 4 == 0).then(|| format!("answer {i}")),
        })
        .collect()
}

fn preferences() -> Vec<PreferenceRow> {
    (0..30)
        .map(|i| PreferenceRow {
            pair_id: format!("pair{i}"),
            prompt_id: format!("p{i}"),
            group_id: (i % 2 == 0).then(|| "g".into()),
            prompt: "q".repeat(i as usize + 1),
            chosen: format!("good {i}"),
            rejected: format!("bad {i}"),
            label: if i % 3 == 0 { 0.5 } else { 1.0 },
            margin: (i % 2 == 1).then_some(i as f32),
            weight: 1.0,
            split: "train".into(),
            source: "fuzz".into(),
            prompt_tokens: Some(vec![1, 2, i]),
            chosen_tokens: None,
            rejected_tokens: Some(vec![i; 3]),
        })
        .collect()
}

fn rollouts() -> Vec<RolloutRow> {
    (0..20)
        .map(|i| {
            let n = (i % 7 + 1) as usize;
            RolloutRow {
                rollout_id: format!("r{i}"),
                prompt_id: format!("p{}", i / 4),
                iteration: 1,
                sample_index: i % 4,
                prompt: "User: hi\nAssistant:".into(),
                messages: None,
                response: "x".repeat(n),
                prompt_tokens: vec![5, 6, 7],
                response_tokens: (0..n as i32).collect(),
                logprobs: vec![-0.5; n],
                ref_logprobs: (i % 2 == 0).then(|| vec![-0.25; n]),
                finish_reason: "eos".into(),
                policy_id: "base".into(),
                seed: i as u64 * 7919,
            }
        })
        .collect()
}

fn bytes_of<R: Record>(rows: &[R]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    write_records(&path, rows, &lineage::<R>()).unwrap();
    std::fs::read(&path).unwrap()
}

/// The three valid files (made once): prompts, preferences, rollouts.
fn valid_files() -> &'static [Vec<u8>; 3] {
    static FILES: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    FILES.get_or_init(|| {
        [
            bytes_of(&prompts()),
            bytes_of(&preferences()),
            bytes_of(&rollouts()),
        ]
    })
}

fn check_err(what: &str, e: &CoreError) -> Result<(), TestCaseError> {
    prop_assert!(e.is_bad_input(), "{what}: not bad input: {e} ({e:?})");
    Ok(())
}

/// Reads `path` with every reader as artifact `kind`; returns whether the rows were read.
fn read_all(path: &Path, kind: usize) -> Result<bool, TestCaseError> {
    let rows = match kind {
        0 => read_records::<PromptRow>(path).map(|r| r.0.len()),
        1 => read_records::<PreferenceRow>(path).map(|r| r.0.len()),
        _ => read_records::<RolloutRow>(path).map(|r| r.0.len()),
    };
    if let Err(e) = &rows {
        check_err("read_records", e)?;
    }
    if let Err(e) = read_lineage(path) {
        check_err("read_lineage", &e)?;
    }
    let artifact = [
        PromptRow::ARTIFACT,
        PreferenceRow::ARTIFACT,
        RolloutRow::ARTIFACT,
    ][kind];
    match Dataset::open(path, artifact) {
        Ok(ds) => {
            if let Err(e) = ds.tokenizer_hash() {
                check_err("tokenizer_hash", &e)?;
            }
        }
        Err(e) => check_err("Dataset::open", &e)?,
    }
    Ok(rows.is_ok())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn corrupted_artifacts_read_or_are_bad_input(kind in 0usize..3, c in corruption()) {
        let valid = &valid_files()[kind];
        let bytes = c.apply(valid);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, &bytes).unwrap();
        let read = read_all(&path, kind)?;
        if bytes.len() < valid.len() {
            prop_assert!(!read, "a file cut to {} of {} bytes was read", bytes.len(), valid.len());
        }
    }

    #[test]
    fn random_bytes_are_bad_input(kind in 0usize..3, mut bytes in prop::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
        if magic {
            // Parquet's magic at both ends, so the reader goes on to the footer.
            bytes.splice(0..0, *b"PAR1");
            bytes.extend_from_slice(b"PAR1");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(!read_all(&path, kind)?);
    }

    #[test]
    fn lineage_text_parses_or_is_bad_input(text in fuzz_common::text(&["{", "}", "\"producer\":", "\"args\":[", "\"inputs\":", "null", ","])) {
        if let Err(e) = Lineage::from_json(&text, Path::new("x.parquet")) {
            check_err("Lineage::from_json", &e)?;
        }
    }
}

#[test]
fn valid_artifacts_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, bytes) in valid_files().iter().enumerate() {
        let path = dir.path().join(format!("{kind}.parquet"));
        std::fs::write(&path, bytes).unwrap();
        assert!(read_all(&path, kind).unwrap(), "artifact {kind}");
    }
}

// Regression: one damaged byte in a footer (found: byte 73 written into a column chunk's
// offset, which then reads as negative) made the parquet crate panic while reading pages
// (`ColumnChunkMetaData::byte_range`). Every byte of the footer's schema and row groups
// (up to the key-value metadata, which is text) overwritten so is now bad input or still
// readable, and some of them are caught by the column-chunk check.
#[test]
fn one_damaged_footer_byte_is_bad_input_not_a_panic() {
    let valid = &valid_files()[1];
    let n = valid.len();
    let footer_len = u32::from_le_bytes(valid[n - 8..n - 4].try_into().unwrap()) as usize;
    let start = n - 8 - footer_len;
    let end = [LINEAGE_KEY.as_bytes(), b"ARROW:schema"]
        .iter()
        .filter_map(|key| valid[start..].windows(key.len()).position(|w| w == *key))
        .min()
        .map_or(n - 8, |i| start + i);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let mut caught = 0;
    for pos in start..end {
        let mut bytes = valid.clone();
        bytes[pos] = 73;
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_records::<PreferenceRow>(&path) {
            assert!(e.is_bad_input(), "byte {pos}: {e}");
            caught += usize::from(e.to_string().contains("corrupt Parquet footer"));
        }
    }
    assert!(caught > 0);
}
