//! Oracle labelling (`pairs`) on rollouts scored here, the synthetic task end to end
//! (including gold-labelled pairs of its SFT completions), and the no-libtorch check.

mod common;

use std::path::Path;

use common::{prep, read_rejects_file};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_records, write_records};
use rlhf_core::records::{PreferenceRow, PromptRow, RolloutRow, ScoresTable, SftRow};
use rlhf_core::schema::Artifact;
use rlhf_core::synthetic::gold_score;

fn rollout(prompt_id: &str, k: i32, response: &str) -> RolloutRow {
    RolloutRow {
        rollout_id: format!("{prompt_id}-{k}"),
        prompt_id: prompt_id.into(),
        iteration: 0,
        sample_index: k,
        prompt: format!("User: review the {prompt_id}.\nAssistant:"),
        messages: None,
        response: response.into(),
        prompt_tokens: vec![1, 2],
        response_tokens: vec![3, k + 10],
        logprobs: vec![-1.0, -1.0],
        ref_logprobs: None,
        finish_reason: "eos".into(),
        policy_id: "base".into(),
        seed: k as u64,
    }
}

/// Rollouts of prompts a (3 samples), b (2, equal scores), c (1), d (score missing on one).
fn fixture(dir: &Path) -> (String, String) {
    fixture_with(
        dir,
        vec![
            Some(-1.0),
            Some(2.0),
            Some(0.5),
            Some(0.0),
            Some(0.0),
            Some(1.0),
            Some(1.0),
            None,
        ],
    )
}

/// The rollouts of [`fixture`] with the given gold scores.
fn fixture_with(dir: &Path, gold: Vec<Option<f32>>) -> (String, String) {
    let rows = vec![
        rollout("a", 0, " bad"),
        rollout("a", 1, " great"),
        rollout("a", 2, " okay"),
        rollout("b", 0, " fine"),
        rollout("b", 1, " plain"),
        rollout("c", 0, " alone"),
        rollout("d", 0, " x"),
        rollout("d", 1, " y"),
    ];
    let r = dir.join("rollouts.parquet");
    let s = dir.join("scores.parquet");
    write_records(&r, &rows, &Lineage::new("test", "0", Artifact::Rollouts)).unwrap();
    let table = ScoresTable {
        rollout_id: rows.iter().map(|r| r.rollout_id.clone()).collect(),
        reward: vec![0.0; 8],
        penalty: vec![0.0; 8],
        sources: vec![("gold".into(), gold)],
    };
    table
        .write(&s, &Lineage::new("test", "0", Artifact::Scores))
        .unwrap();
    (
        r.to_string_lossy().into_owned(),
        s.to_string_lossy().into_owned(),
    )
}

#[test]
fn scores_far_apart_give_a_finite_margin() {
    let t = tempfile::tempdir().unwrap();
    let big = Some(3.0e38f32);
    let (r, s) = fixture_with(
        t.path(),
        vec![big, Some(-3.0e38), None, None, None, None, None, None],
    );
    let out = t.path().join("prefs.parquet");
    let o = prep(&[
        "pairs",
        "--rollouts",
        &r,
        "--scores",
        &s,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = read_records::<PreferenceRow>(&out).unwrap().0;
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].chosen.as_str(), p[0].label), (" bad", 1.0));
    assert_eq!(p[0].margin, Some(f32::MAX), "capped, not inf");
}

#[test]
fn pairs_order_by_score_keep_ties_and_reject_unpairable() {
    let t = tempfile::tempdir().unwrap();
    let (r, s) = fixture(t.path());
    let out = t.path().join("prefs.parquet");
    let o = prep(&[
        "pairs",
        "--rollouts",
        &r,
        "--scores",
        &s,
        "--out",
        out.to_str().unwrap(),
        "--eval-fraction",
        "0",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = read_records::<PreferenceRow>(&out).unwrap().0;
    let got: Vec<(&str, &str, f32)> = p
        .iter()
        .map(|x| (x.chosen.as_str(), x.rejected.as_str(), x.label))
        .collect();
    assert_eq!(
        got,
        vec![
            (" great", " bad", 1.0),
            (" okay", " bad", 1.0),
            (" great", " okay", 1.0),
            (" fine", " plain", 0.5)
        ]
    );
    assert_eq!(p[0].margin, Some(3.0));
    assert_eq!(p[0].chosen_tokens, Some(vec![3, 11]));
    assert!(p[0].group_id.is_some() && p[3].group_id.is_none());
    assert_eq!(p[0].source, "oracle:gold");
    let mut rej = read_rejects_file(&t.path().join("prefs-rejects.parquet"));
    rej.sort();
    assert_eq!(
        rej,
        vec![
            ("missing_score".into(), 8),
            ("no_partner".into(), 6),
            ("no_partner".into(), 7)
        ]
    );
}

#[test]
fn label_noise_flips_seeded_fraction_and_ties_can_be_dropped() {
    let t = tempfile::tempdir().unwrap();
    let (r, s) = fixture(t.path());
    let out = t.path().join("noisy.parquet");
    let o = prep(&[
        "pairs",
        "--rollouts",
        &r,
        "--scores",
        &s,
        "--out",
        out.to_str().unwrap(),
        "--label-noise",
        "1",
        "--drop-ties",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = read_records::<PreferenceRow>(&out).unwrap().0;
    let got: Vec<(&str, &str)> = p
        .iter()
        .map(|x| (x.chosen.as_str(), x.rejected.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(" bad", " great"), (" bad", " okay"), (" okay", " great")]
    );
    assert!(read_rejects_file(&t.path().join("noisy-rejects.parquet")).contains(&("tie".into(), 4)));
    // A fraction in between: seeded, so two runs agree and another seed differs somewhere.
    let run = |seed: &str, name: &str| {
        let o = t.path().join(name);
        assert_eq!(
            prep(&[
                "pairs",
                "--rollouts",
                &r,
                "--scores",
                &s,
                "--out",
                o.to_str().unwrap(),
                "--label-noise",
                "0.5",
                "--seed",
                seed
            ])
            .code,
            0
        );
        std::fs::read(o).unwrap()
    };
    assert_eq!(run("1", "x1.parquet"), run("1", "x1.parquet"));
}

#[test]
fn synthetic_writes_task_files_deterministically_with_gold_spread() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("data");
    let args = [
        "synthetic",
        "--seed",
        "3",
        "--num-prompts",
        "100",
        "--completions-per-prompt",
        "4",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    let o = prep(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let bytes = |n: &str| std::fs::read(out.join(n)).unwrap();
    let first: Vec<Vec<u8>> = [
        "sft.parquet",
        "corpus.parquet",
        "prompts.parquet",
        "eval_prompts.parquet",
    ]
    .iter()
    .map(|n| bytes(n))
    .collect();
    assert_eq!(prep(&args).code, 0);
    let second: Vec<Vec<u8>> = [
        "sft.parquet",
        "corpus.parquet",
        "prompts.parquet",
        "eval_prompts.parquet",
    ]
    .iter()
    .map(|n| bytes(n))
    .collect();
    assert_eq!(first, second);
    let sft = read_records::<SftRow>(&out.join("sft.parquet")).unwrap().0;
    let train = read_records::<PromptRow>(&out.join("prompts.parquet"))
        .unwrap()
        .0;
    let eval = read_records::<PromptRow>(&out.join("eval_prompts.parquet"))
        .unwrap()
        .0;
    assert_eq!(train.len() + eval.len(), 100);
    assert!(train.iter().all(|p| p.split == "train") && eval.iter().all(|p| p.split == "eval"));
    assert!(sft.len() >= 395 && sft.len() <= 400);
    let gold: Vec<f32> = sft
        .iter()
        .map(|r| gold_score(&r.prompt, &r.completion))
        .collect();
    assert!(gold.iter().any(|&g| g >= 3.0) && gold.iter().any(|&g| g <= -2.0));
    // The corpus carries a text column for tokenizer training.
    let ds =
        rlhf_core::parquet_io::Dataset::open(&out.join("corpus.parquet"), Artifact::Sft).unwrap();
    let (_, b) = ds.batches().next().unwrap().unwrap();
    assert!(b.column_by_name("text").is_some());
}

#[test]
fn split_copies_one_split() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("d");
    assert_eq!(
        prep(&[
            "synthetic",
            "--num-prompts",
            "60",
            "--out-dir",
            data.to_str().unwrap()
        ])
        .code,
        0
    );
    let out = t.path().join("eval_sft.parquet");
    let o = prep(&[
        "split",
        "--input",
        data.join("sft.parquet").to_str().unwrap(),
        "--split",
        "eval",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let rows = read_records::<SftRow>(&out).unwrap().0;
    assert!(!rows.is_empty() && rows.iter().all(|r| r.split == "eval"));
    let o = prep(&[
        "split",
        "--input",
        data.join("prompts.parquet").to_str().unwrap(),
        "--split",
        "eval",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("no rows with split `eval`"),
        "{}",
        o.stderr
    );
}

#[test]
fn binary_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_prep-data"))
        .output();
    let Ok(out) = out else {
        eprintln!("ldd is not available; skipping");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("libc"), "unexpected ldd output: {text}");
    for lib in ["libtorch", "libc10", "libtorch_cpu"] {
        assert!(!text.contains(lib), "prep-data links {lib}:\n{text}");
    }
}
