//! Every error path of the CLI: exit code and a message that names the file (and row).

mod common;

use common::{jsonl, prep};
use serde_json::json;

fn out_dir(t: &tempfile::TempDir) -> String {
    t.path().join("out").to_string_lossy().into_owned()
}

#[test]
fn missing_input_file_is_exit_3_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let o = prep(&[
        "convert",
        "--input",
        "/nonexistent/data.jsonl",
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("/nonexistent/data.jsonl") && o.stderr.contains("no such file"),
        "{}",
        o.stderr
    );
}

#[test]
fn unknown_extension_and_empty_folder_are_exit_3() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("notes.txt");
    std::fs::write(&f, "x").unwrap();
    let o = prep(&[
        "convert",
        "--input",
        f.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("notes.txt") && o.stderr.contains("unknown file type"),
        "{}",
        o.stderr
    );
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = prep(&[
        "convert",
        "--input",
        empty.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3);
    assert!(o.stderr.contains("no input files found"), "{}", o.stderr);
}

#[test]
fn bad_flag_values_and_unknown_flags_are_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("not-a-model");
    std::fs::create_dir(&empty).unwrap();
    let f = t.path().join("a.jsonl");
    jsonl(
        &f,
        &[json!({"prompt": "p", "chosen": "a", "rejected": "b"})],
    );
    let input = f.to_str().unwrap();
    let o = prep(&[
        "convert",
        "--input",
        input,
        "--out-dir",
        &out_dir(&t),
        "--eval-fraction",
        "1.5",
    ]);
    assert_eq!(o.code, 2, "a bad flag value is a usage error");
    assert!(
        o.stderr.contains("--eval-fraction 1.5 must be in [0, 1]"),
        "{}",
        o.stderr
    );
    let o = prep(&[
        "convert",
        "--input",
        input,
        "--out-dir",
        &out_dir(&t),
        "--max-prompt-tokens",
        "5",
    ]);
    assert_eq!(
        o.code, 2,
        "a flag combination that cannot work is a usage error"
    );
    assert!(o.stderr.contains("need --tokenizer"), "{}", o.stderr);
    let o = prep(&[
        "convert",
        "--input",
        input,
        "--out-dir",
        &out_dir(&t),
        "--tokenizer",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 3);
    assert!(o.stderr.contains("no tokenizer.json"), "{}", o.stderr);
    let o = prep(&[
        "convert",
        "--input",
        input,
        "--out-dir",
        &out_dir(&t),
        "--num-shards",
        "2",
        "--shard-index",
        "2",
    ]);
    assert_eq!(o.code, 2, "a shard index out of range is a usage error");
    assert!(o.stderr.contains("out of range"), "{}", o.stderr);
    let o = prep(&[
        "convert",
        "--input",
        input,
        "--out-dir",
        &out_dir(&t),
        "--no-such-flag",
    ]);
    assert_eq!(o.code, 2);
    let o = prep(&[
        "synthetic",
        "--num-prompts",
        "5000",
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 2, "a bad flag value is a usage error");
    assert!(o.stderr.contains("1 to 640"), "{}", o.stderr);
}

#[test]
fn strict_fails_on_first_reject_naming_file_row_and_reason() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.jsonl");
    std::fs::write(&f, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q\", \"chosen\": \"x\", \"rejected\": \"x\"}\n").unwrap();
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--strict",
        "--input",
        f.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("a.jsonl row 2: chosen_equals_rejected"),
        "{}",
        o.stderr
    );
    // Nothing that looks finished is left behind.
    assert!(!out.join("preferences.parquet").exists());
}

#[test]
fn undetectable_format_and_malformed_json_array_are_exit_3() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("odd.jsonl");
    jsonl(&f, &[json!({"question": "q", "answer": "a"})]);
    let o = prep(&[
        "convert",
        "--input",
        f.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains(
            "odd.jsonl row 1: cannot detect the format from the columns [question, answer]"
        ),
        "{}",
        o.stderr
    );
    let a = t.path().join("broken.json");
    std::fs::write(&a, "[{\"prompt\": \"p\"}, {\"prompt\": ").unwrap();
    let o = prep(&[
        "convert",
        "--input",
        a.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("broken.json") && o.stderr.contains("malformed JSON array"),
        "{}",
        o.stderr
    );
}

#[test]
fn wrong_format_rejecting_every_row_is_exit_3_with_hint() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.jsonl");
    jsonl(
        &f,
        &[json!({"prompt": "p", "chosen": "a", "rejected": "b"})],
    );
    let o = prep(&[
        "convert",
        "--format",
        "shp",
        "--input",
        f.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr
            .contains("none of the 1 rows could be used (most common reason: missing_field)"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("--format"), "{}", o.stderr);
}

#[test]
fn corrupt_gzip_is_exit_3_naming_file() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.jsonl.gz");
    std::fs::write(&f, b"\x1f\x8b\x08\x00garbage-not-deflate").unwrap();
    let o = prep(&[
        "convert",
        "--input",
        f.to_str().unwrap(),
        "--out-dir",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("a.jsonl.gz row 1: read failed"),
        "{}",
        o.stderr
    );
}

#[test]
fn pairs_with_missing_score_column_is_exit_3_listing_columns() {
    let t = tempfile::tempdir().unwrap();
    let o = prep(&[
        "pairs",
        "--rollouts",
        "/nonexistent/r.parquet",
        "--scores",
        "/nonexistent/s.parquet",
        "--out",
        &out_dir(&t),
    ]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("/nonexistent/r.parquet"), "{}", o.stderr);
    let o = prep(&[
        "pairs",
        "--rollouts",
        "x",
        "--scores",
        "y",
        "--out",
        "z",
        "--label-noise",
        "2",
    ]);
    assert_eq!(o.code, 2, "a bad flag value is a usage error");
    assert!(
        o.stderr.contains("--label-noise 2 must be in [0, 1]"),
        "{}",
        o.stderr
    );
}
