//! Artifact layer tests: schema round trips, atomic writes, lineage contents,
//! byte-identical rewrites, and schema-mismatch messages.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{
    read_lineage, read_records, resolve_inputs, write_records, ArtifactWriter, Dataset,
};
use rlhf_core::records::{
    Message, MetricRow, PreferenceRow, PromptRow, RatingRow, Record, RejectRow, RolloutRow,
    ScoresTable, SftRow,
};
use rlhf_core::schema::Artifact;
use rlhf_core::CoreError;

fn lineage(a: Artifact) -> Lineage {
    let mut l = Lineage::new("test", "0.1.0", a);
    l.args = vec!["--seed".into(), "1".into()];
    l
}

fn prompts() -> Vec<PromptRow> {
    vec![
        PromptRow {
            prompt_id: "p1".into(),
            prompt: "User: hi\nAssistant:".into(),
            messages: Some(vec![Message::new("user", "hi")]),
            prompt_tokens: Some(vec![1, 2, 3]),
            split: "train".into(),
            source: "test".into(),
            reference: None,
        },
        PromptRow {
            prompt_id: "p2".into(),
            prompt: "plain".into(),
            messages: None,
            prompt_tokens: None,
            split: "eval".into(),
            source: "test".into(),
            reference: Some("answer".into()),
        },
    ]
}

fn round_trip<R: Record + PartialEq + std::fmt::Debug>(rows: Vec<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_records(&path, &rows, &lineage(R::ARTIFACT)).unwrap();
    let (back, _) = read_records::<R>(&path).unwrap();
    assert_eq!(back, rows);
}

#[test]
fn every_artifact_round_trips() {
    round_trip(prompts());
    round_trip(vec![PreferenceRow {
        pair_id: "a".into(),
        prompt_id: "p".into(),
        group_id: Some("g".into()),
        prompt: "q".into(),
        chosen: "good".into(),
        rejected: "bad".into(),
        label: 0.5,
        margin: Some(2.0),
        weight: 1.0,
        split: "train".into(),
        source: "s".into(),
        prompt_tokens: None,
        chosen_tokens: Some(vec![4]),
        rejected_tokens: Some(vec![5, 6]),
    }]);
    round_trip(vec![RatingRow {
        rating_id: "r".into(),
        prompt_id: "p".into(),
        prompt: "q".into(),
        response: "a".into(),
        rating: 1.0,
        split: "eval".into(),
        source: "s".into(),
        prompt_tokens: None,
        response_tokens: None,
    }]);
    round_trip(vec![SftRow {
        sft_id: "s".into(),
        prompt_id: "p".into(),
        prompt: "q".into(),
        completion: "a".into(),
        messages: Some(vec![
            Message::new("user", "q"),
            Message::new("assistant", "a"),
        ]),
        split: "train".into(),
        source: "s".into(),
        prompt_tokens: Some(vec![1]),
        completion_tokens: Some(vec![2]),
    }]);
    round_trip(vec![RolloutRow {
        rollout_id: "x".into(),
        prompt_id: "p".into(),
        iteration: 2,
        sample_index: 1,
        prompt: "q".into(),
        messages: None,
        response: "a".into(),
        prompt_tokens: vec![1, 2],
        response_tokens: vec![3, 4],
        logprobs: vec![-0.5, -1.25],
        ref_logprobs: Some(vec![-0.75, -1.0]),
        finish_reason: "eos".into(),
        policy_id: "base".into(),
        seed: 7,
    }]);
    round_trip(vec![MetricRow {
        stage: "s".into(),
        iteration: 1,
        step: 3,
        metric: "train/loss".into(),
        value: 0.25,
    }]);
    round_trip(vec![RejectRow {
        source_file: "f.jsonl".into(),
        row_number: 4,
        reason: "empty text".into(),
        row: "{}".into(),
    }]);
}

#[test]
fn a_rollout_whose_logprobs_do_not_match_its_tokens_is_refused_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollouts.parquet");
    let good = RolloutRow {
        rollout_id: "x".into(),
        prompt_id: "p".into(),
        iteration: 1,
        sample_index: 0,
        prompt: "q".into(),
        messages: None,
        response: "a".into(),
        prompt_tokens: vec![1],
        response_tokens: vec![3, 4],
        logprobs: vec![-0.5, -1.25],
        ref_logprobs: None,
        finish_reason: "eos".into(),
        policy_id: "base".into(),
        seed: 7,
    };
    let bad = RolloutRow {
        rollout_id: "y".into(),
        logprobs: vec![-0.5],
        ..good.clone()
    };
    write_records(&path, &[good, bad], &lineage(Artifact::Rollouts)).unwrap();
    match read_records::<RolloutRow>(&path) {
        Err(CoreError::BadInput { row, message, .. }) => {
            assert_eq!(row, Some(1));
            assert!(
                message.contains("rollout y: 2 response tokens but 1 logprobs"),
                "{message}"
            );
        }
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[test]
fn scores_keep_their_source_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.parquet");
    let t = ScoresTable {
        rollout_id: vec!["a".into(), "b".into()],
        reward: vec![1.0, -1.0],
        penalty: vec![0.0, -1.0],
        sources: vec![
            ("rm".into(), vec![Some(1.0), Some(0.0)]),
            ("gold".into(), vec![Some(3.0), None]),
        ],
    };
    t.write(&path, &lineage(Artifact::Scores)).unwrap();
    let (back, _) = ScoresTable::read(&path).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.source("gold"), Some(&[Some(3.0), None][..]));
}

#[test]
fn lineage_is_stored_in_the_footer() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello").unwrap();
    let mut l = lineage(Artifact::Prompts).with_tokenizer(Some("tok123".into()));
    l.add_input("raw", &input).unwrap();
    let path = dir.path().join("p.parquet");
    write_records(&path, &prompts(), &l).unwrap();
    let back = read_lineage(&path).unwrap().unwrap();
    assert_eq!(back.producer, "test");
    assert_eq!(back.schema, "prompts");
    assert_eq!(back.tokenizer_hash.as_deref(), Some("tok123"));
    assert_eq!(back.args, vec!["--seed", "1"]);
    assert_eq!(
        back.inputs[0].blake3,
        blake3::hash(b"hello").to_hex().to_string()
    );
    let ds = Dataset::open(&path, Artifact::Prompts).unwrap();
    assert_eq!(ds.tokenizer_hash().unwrap().as_deref(), Some("tok123"));
}

#[test]
fn rewrites_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    write_records(&a, &prompts(), &lineage(Artifact::Prompts)).unwrap();
    write_records(&b, &prompts(), &lineage(Artifact::Prompts)).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn a_writer_dropped_half_way_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.parquet");
    {
        let mut w = ArtifactWriter::create(
            &target,
            Artifact::Prompts,
            Artifact::Prompts.schema(),
            &lineage(Artifact::Prompts),
        )
        .unwrap();
        w.write(&PromptRow::to_batch(&prompts()).unwrap()).unwrap();
        // dropped without finish(): as if the process was killed
    }
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_null_in_a_required_column_is_refused_naming_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rejects.parquet");
    // Every rejects column as the schema has it, but `reason` nullable and null in row 1.
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_file", DataType::Utf8, false),
        Field::new("row_number", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("row", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a.jsonl", "a.jsonl"])),
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("empty"), None])),
            Arc::new(StringArray::from(vec!["{}", "{}"])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    match read_records::<RejectRow>(&path) {
        Err(CoreError::BadInput { row, message, .. }) => {
            assert_eq!(row, Some(1));
            assert_eq!(message, "column `reason` is null");
        }
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[test]
fn schema_mismatch_names_file_column_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("iteration", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = Dataset::open(&path, Artifact::Metrics).unwrap_err();
    assert!(err.is_bad_input());
    let msg = err.to_string();
    assert!(msg.contains("metrics.parquet"), "{msg}");
    assert!(
        msg.contains("column `iteration` has type int64, expected int32"),
        "{msg}"
    );
    assert!(
        msg.contains("expected schema: stage: utf8, iteration: int32"),
        "{msg}"
    );
}

#[test]
fn folders_of_parts_and_globs_read_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let rows = prompts();
    for (i, r) in rows.iter().enumerate() {
        let p = dir.path().join(format!("part-{i:05}-of-00002.parquet"));
        write_records(&p, std::slice::from_ref(r), &lineage(Artifact::Prompts)).unwrap();
    }
    let (back, ds) = read_records::<PromptRow>(dir.path()).unwrap();
    assert_eq!(ds.files.len(), 2);
    assert_eq!(back, rows);
    let pattern = dir.path().join("part-*.parquet");
    assert_eq!(resolve_inputs(&pattern).unwrap().len(), 2);
    let none = resolve_inputs(Path::new(&dir.path().join("nothing-*.parquet"))).unwrap_err();
    assert!(matches!(none, CoreError::NoInput { .. }));
}
