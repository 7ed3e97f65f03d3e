//! `label-pairs export`: columns and values of the preferences file, lineage, what
//! train-rm-lora's reader requires, Cohen's kappa on a known fixture, and its refusals.

mod common;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use common::*;
use rlhf_core::parquet_io::{read_lineage, read_records, Dataset};
use rlhf_core::records::PreferenceRow;
use rlhf_core::schema::Artifact;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Four prompts, two samples each; sample 0 (the pair's first by rollout id) says "first".
fn fixture(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("rollouts.parquet");
    write_rollouts(
        &path,
        &[
            &["first 0", "second 0"],
            &["first 1", "second 1"],
            &["first 2", "second 2"],
            &["first 3", "second 3"],
        ],
    );
    path
}

/// Answers the shown pair with a judgement about its first / second response.
fn judge(srv: &Server, who: &str, judgement: &str, reason: Option<&str>) -> Value {
    let shown = srv.next(who);
    let left_is_first = shown["left"].as_str().unwrap().starts_with("first");
    let choice = match (judgement, left_is_first) {
        ("first", true) | ("second", false) => "left",
        ("first", false) | ("second", true) => "right",
        (other, _) => other,
    };
    let (status, body) = srv.answer(who, &shown, choice, reason);
    assert_eq!(status, 200, "{body}");
    shown
}

/// ann and bob both label all four pairs (--overlap 2): ann first, first, second, equal;
/// bob first, second, second, equal. p_o = 3/4, p_e = (2*1 + 1*2 + 1*1)/16 = 5/16,
/// kappa = (3/4 - 5/16) / (11/16) = 7/11.
fn labelled(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let r = fixture(dir);
    let out = dir.join("labels");
    let srv = Server::start(
        &["--rollouts", s(&r), "--out", s(&out), "--overlap", "2"],
        &dir.join("log"),
    );
    let mut by_prompt: HashMap<String, Vec<&str>> = HashMap::new();
    for (who, plan) in [
        ("ann", ["first", "first", "second", "equal"]),
        ("bob", ["first", "second", "second", "equal"]),
    ] {
        for j in plan {
            let reason = (who == "ann" && j == "second").then_some("<b>less</b> \"helpful\"");
            let shown = judge(&srv, who, j, reason);
            by_prompt
                .entry(shown["prompt"].as_str().unwrap().to_string())
                .or_default()
                .push(j);
        }
        assert_eq!(srv.next(who)["done"], true);
    }
    // Both saw the pairs in the same (queue) order.
    assert!(by_prompt.values().all(|v| v.len() == 2));
    (r, out)
}

#[test]
fn export_writes_the_preferences_contract_with_labeller_reason_and_lineage() {
    let t = tempfile::tempdir().unwrap();
    let (rollouts, labels) = labelled(t.path());
    let prefs = t.path().join("prefs.parquet");
    let summary = t.path().join("summary.json");
    let run = label_pairs(&[
        "export",
        "--in",
        s(&labels),
        "--out",
        s(&prefs),
        "--summary-json",
        s(&summary),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("Cohen's kappa 0.636"), "{}", run.stderr);

    // What train-rm-lora reads: the preferences artifact through rlhf-core's reader, its
    // row checks (label in [0, 1], weight >= 0, split train/eval), and the tokenizer of
    // the lineage (the rollouts', so stored tokens are used with the matching model).
    let ds = Dataset::open(&prefs, Artifact::Preferences).unwrap();
    assert_eq!(ds.tokenizer_hash().unwrap().as_deref(), Some(TOKENIZER));
    let (rows, _) = read_records::<PreferenceRow>(&prefs).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert!((0.0..=1.0).contains(&r.label) && r.weight == 1.0);
        assert!(r.split == "train" || r.split == "eval");
        assert_eq!(r.source, "human:label-pairs");
        assert!(r.prompt_tokens.is_some() && r.chosen_tokens.is_some());
        if r.label == 1.0 {
            assert_ne!(r.chosen, r.rejected);
        } else {
            assert_eq!(r.label, 0.5);
            assert!(r.chosen.starts_with("first") && r.rejected.starts_with("second"));
        }
        assert_eq!(
            r.pair_id,
            rlhf_core::hash::content_id(&[&r.prompt, &r.chosen, &r.rejected])
        );
    }
    let firsts = rows
        .iter()
        .filter(|r| r.label == 1.0 && r.chosen.starts_with("first"))
        .count();
    let seconds = rows
        .iter()
        .filter(|r| r.label == 1.0 && r.chosen.starts_with("second"))
        .count();
    assert_eq!((firsts, seconds, 8 - firsts - seconds), (3, 3, 2));
    // Each pair's rows share a group (two labellers).
    let mut groups: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *groups.entry(r.group_id.as_deref().unwrap()).or_default() += 1;
    }
    assert!(
        groups.len() == 4 && groups.values().all(|&n| n == 2),
        "{groups:?}"
    );

    // Extra columns.
    let batch = ds.batches().next().unwrap().unwrap().1;
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for extra in [
        "labeller",
        "reason",
        "chosen_rollout_id",
        "rejected_rollout_id",
        "chosen_side",
    ] {
        assert!(names.contains(&extra.to_string()), "{names:?}");
        assert!(batch.schema().field_with_name(extra).unwrap().is_nullable());
    }
    let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    let (labeller, reason, side) = (col("labeller"), col("reason"), col("chosen_side"));
    let (chosen_id, chosen) = (col("chosen_rollout_id"), col("chosen"));
    let ann = (0..8).filter(|&i| labeller.value(i) == "ann").count();
    assert_eq!(ann, 4);
    let reasons: Vec<&str> = (0..8)
        .filter(|&i| !reason.is_null(i))
        .map(|i| reason.value(i))
        .collect();
    assert_eq!(reasons, ["<b>less</b> \"helpful\""]);
    for (i, row) in rows.iter().enumerate() {
        // chosen_rollout_id names the chosen text's sample: r{p}-0 says "first".
        assert_eq!(
            chosen_id.value(i).ends_with("-0"),
            chosen.value(i).starts_with("first")
        );
        assert_eq!(side.is_null(i), row.label == 0.5);
    }

    // Lineage: the rollouts by content hash, the journal, the counts.
    let lineage = read_lineage(&prefs).unwrap().unwrap();
    assert_eq!(lineage.producer, "label-pairs");
    assert_eq!(lineage.schema, "preferences");
    let roles: Vec<&str> = lineage.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(roles, ["rollouts", "journal"]);
    assert_eq!(
        lineage.inputs[0].blake3,
        rlhf_core::hash::file_hash(&rollouts).unwrap()
    );

    // Summary: per-labeller counts and kappa.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(v["stage"], "label-pairs");
    assert_eq!(v["outputs"][0]["rows"], 8);
    let kappa = v["metrics"]["kappa"].as_f64().unwrap();
    assert!((kappa - 7.0 / 11.0).abs() < 1e-9, "{kappa}");
    assert_eq!(v["details"]["labellers"]["ann"]["exported"], 4);
    assert_eq!(v["details"]["labellers"]["bob"]["equal"], 1);
    assert_eq!(v["details"]["agreement"][0]["pairs"], 4);
    assert_eq!(v["details"]["agreement"][0]["agreement"], 0.75);

    // The same journal and command give the same bytes.
    let first = std::fs::read(&prefs).unwrap();
    let run = label_pairs(&[
        "export",
        "--in",
        s(&labels),
        "--out",
        s(&prefs),
        "--summary-json",
        s(&summary),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        first == std::fs::read(&prefs).unwrap(),
        "a second export differs"
    );
}

#[test]
fn export_refuses_overlapping_outputs_changed_rollouts_and_missing_journals() {
    let t = tempfile::tempdir().unwrap();
    let (rollouts, labels) = labelled(t.path());
    let inside = labels.join("prefs.parquet");
    let run = label_pairs(&["export", "--in", s(&labels), "--out", s(&inside)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--out") && run.stderr.contains("--in"),
        "{}",
        run.stderr
    );
    let run = label_pairs(&["export", "--in", s(&labels), "--out", s(&rollouts)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!inside.exists());

    // Rollouts that changed since labelling are refused (exit 3) naming both hashes.
    let moved = t.path().join("moved.parquet");
    write_rollouts(&moved, &[&["other", "texts"]]);
    let out = t.path().join("p.parquet");
    let run = label_pairs(&[
        "export",
        "--in",
        s(&labels),
        "--out",
        s(&out),
        "--rollouts",
        s(&moved),
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("not the rollouts that were labelled"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
    // The same content elsewhere is fine.
    let copy = t.path().join("copy.parquet");
    std::fs::copy(&rollouts, &copy).unwrap();
    let run = label_pairs(&[
        "export",
        "--in",
        s(&labels),
        "--out",
        s(&out),
        "--rollouts",
        s(&copy),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = label_pairs(&["export", "--in", s(&empty), "--out", s(&out)]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("no journal here"), "{}", run.stderr);
    // A damaged journal line is bad input naming the line.
    let journal = labels.join("journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text = text.replacen("\"type\":\"answer\"", "\"type\":\"answr\"", 1);
    std::fs::write(&journal, text).unwrap();
    let run = label_pairs(&["export", "--in", s(&labels), "--out", s(&out)]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("journal.jsonl line 2"),
        "{}",
        run.stderr
    );
}
