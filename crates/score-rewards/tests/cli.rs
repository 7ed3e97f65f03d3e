//! End-to-end tests of the score-rewards binary: reward-adapter scores against peft on the
//! same tokens, normalisation, ensembles, rules with weights and the EOS penalty, sharding,
//! determinism, tokenizer refusal and --retokenize, and error exits.

mod common;

use std::path::{Path, PathBuf};

use rlhf_core::parquet_io::{read_lineage, read_records};
use rlhf_core::records::{RolloutRow, ScoresTable};
use rlhf_core::tokenizer::Tokenizer;

use common::{reward_adapter, rollouts, run, tiny_model, write_rollouts};

const BIAS: f64 = -0.25;
const SCALE: f64 = 2.0;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rows: Vec<RolloutRow>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model_dir = root.join("model");
        let mut model = tiny_model(&model_dir, 3);
        reward_adapter(
            &mut model,
            &model_dir,
            "rm",
            &root.join("rm"),
            7,
            BIAS,
            SCALE,
        );
        reward_adapter(
            &mut model,
            &model_dir,
            "rm2",
            &root.join("rm2"),
            8,
            0.0,
            1.0,
        );
        let rows = rollouts(5, 3);
        let hash = Tokenizer::from_dir(&model_dir).unwrap().hash().to_string();
        write_rollouts(&root.join("rollouts.parquet"), &rows, Some(&hash));
        write_rollouts(
            &root.join("foreign.parquet"),
            &rows,
            Some("0123456789abcdef"),
        );
        Fixture {
            _dir: dir,
            root,
            rows,
        }
    }

    fn p(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// Scores `rollouts` into `out` with `extra` flags; panics unless it succeeds.
    fn score(&self, rollouts: &str, out: &str, extra: &[&str]) -> ScoresTable {
        let (r, o) = (self.p(rollouts), self.p(out));
        let mut args = vec![
            "--rollouts",
            r.as_str(),
            "--out",
            o.as_str(),
            "--device",
            "cpu",
        ];
        args.extend(extra);
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 0, "score-rewards failed: {stderr}");
        if Path::new(&o).is_dir() {
            // A part folder is read once every part is there.
            return ScoresTable::default();
        }
        ScoresTable::read(Path::new(&o)).unwrap().0
    }
}

/// Rows of a table as (rollout_id, reward, penalty, sources), sorted by id.
fn rows_of(t: &ScoresTable) -> Vec<(String, f32, f32, Vec<Option<f32>>)> {
    let mut v: Vec<_> = (0..t.rollout_id.len())
        .map(|i| {
            (
                t.rollout_id[i].clone(),
                t.reward[i],
                t.penalty[i],
                t.sources.iter().map(|(_, c)| c[i]).collect(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

const PEFT_SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoModelForSequenceClassification
from peft import PeftModel
torch.set_num_threads(1)
a = json.load(open(sys.argv[1]))
base = AutoModelForSequenceClassification.from_pretrained(a["model"], num_labels=1, dtype=torch.float32)
model = PeftModel.from_pretrained(base, a["adapter"]).eval()
out = []
with torch.no_grad():
    for ids in a["seqs"]:
        out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
print(json.dumps(out))
"#;

#[test]
fn reward_adapter_scores_equal_peft_and_are_normalised() {
    let f = Fixture::new();
    let t = f.score(
        "rollouts.parquet",
        "s.parquet",
        &["--model", &f.p("model"), "--reward-model", &f.p("rm")],
    );
    let names: Vec<&str> = t.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rm"]);
    let theirs = common::python_reference(
        &f.root,
        "peft_scores",
        PEFT_SCRIPT,
        serde_json::json!({"model": f.p("model"), "adapter": f.p("rm"), "seqs": common::sequences(&f.rows)}),
    );
    assert_eq!(theirs.len(), f.rows.len());
    let rm = t.source("rm").unwrap();
    let mut max_diff = 0f64;
    for (i, raw) in theirs.iter().enumerate() {
        assert_eq!(
            t.rollout_id[i], f.rows[i].rollout_id,
            "rows keep the rollouts' order"
        );
        let expected = (raw + BIAS) * SCALE;
        max_diff = max_diff.max((rm[i].unwrap() as f64 - expected).abs());
        assert_eq!(
            t.reward[i],
            rm[i].unwrap(),
            "one reward model of weight 1 is the reward"
        );
    }
    // float32 on different kernels; scores are O(1) and scaled by 2.
    assert!(max_diff < 2e-4, "scores differ from peft's by {max_diff}");
    let spread = theirs.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - theirs.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        spread > 1e-2,
        "the fixture should give distinct scores (spread {spread})"
    );
}

#[test]
fn rules_weights_and_eos_penalty_combine_into_reward() {
    let f = Fixture::new();
    let t = f.score(
        "rollouts.parquet",
        "s.parquet",
        &[
            "--rule",
            "gold:0",
            "--rule",
            "length:target=4,weight=0.5",
            "--rule",
            "contains:w100",
            "--eos-penalty=-1",
        ],
    );
    let names: Vec<&str> = t.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gold", "length", "contains"]);
    for (i, r) in f.rows.iter().enumerate() {
        let words = r.response.split_whitespace().count() as f32;
        let length = -(words - 4.0).abs() / 4.0;
        let contains = if r.response.contains("w100") {
            1.0
        } else {
            0.0
        };
        let gold = rlhf_core::synthetic::gold_score(&r.prompt, &r.response);
        let penalty = if r.finish_reason == "eos" { 0.0 } else { -1.0 };
        assert_eq!(t.source("gold").unwrap()[i], Some(gold));
        assert_eq!(t.source("length").unwrap()[i], Some(length), "row {i}");
        assert_eq!(t.penalty[i], penalty);
        assert!(
            (t.reward[i] - (0.5 * length + contains + penalty)).abs() < 1e-6,
            "row {i}"
        );
    }
    let lineage = read_lineage(&f.root.join("s.parquet")).unwrap().unwrap();
    let stats = &lineage.extra["reward_stats"]["reward"];
    let mean = t.reward.iter().map(|&r| r as f64).sum::<f64>() / t.reward.len() as f64;
    assert!(
        (stats["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{stats}"
    );
    for key in ["std", "p05", "p50", "p95", "corr_length"] {
        assert!(stats[key].is_number(), "missing {key}: {stats}");
    }
    assert_eq!(lineage.extra["eos_penalised_rows"], 10);
}

#[test]
fn ensembles_give_member_mean_and_std_columns() {
    let f = Fixture::new();
    let (m, a, b) = (f.p("model"), f.p("rm"), f.p("rm2"));
    let t = f.score(
        "rollouts.parquet",
        "s.parquet",
        &[
            "--model",
            &m,
            "--reward-model",
            &a,
            "--reward-model",
            &b,
            "--rm-std-penalty",
            "0.5",
        ],
    );
    let names: Vec<&str> = t.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rm_0", "rm_1", "rm_mean", "rm_std"]);
    let single = f.score(
        "rollouts.parquet",
        "one.parquet",
        &["--model", &m, "--reward-model", &a],
    );
    for i in 0..t.reward.len() {
        let (x, y) = (
            t.source("rm_0").unwrap()[i].unwrap(),
            t.source("rm_1").unwrap()[i].unwrap(),
        );
        assert_eq!(
            x,
            single.source("rm").unwrap()[i].unwrap(),
            "member 0 is the single model"
        );
        let (mean, std) = ((x + y) / 2.0, (x - y).abs() / 2.0);
        assert!((t.source("rm_mean").unwrap()[i].unwrap() - mean).abs() < 1e-6);
        assert!((t.source("rm_std").unwrap()[i].unwrap() - std).abs() < 1e-6);
        assert!((t.reward[i] - (mean - 0.5 * std)).abs() < 1e-5, "row {i}");
    }
}

#[test]
fn shards_concatenate_and_runs_are_deterministic() {
    let f = Fixture::new();
    let m = f.p("model");
    let flags = [
        "--model",
        m.as_str(),
        "--reward-model",
        &f.p("rm"),
        "--rule",
        "gold:0",
        "--eos-penalty=-1",
    ];
    let whole = f.score("rollouts.parquet", "whole.parquet", &flags);
    let bytes = std::fs::read(f.root.join("whole.parquet")).unwrap();
    f.score("rollouts.parquet", "whole.parquet", &flags);
    assert_eq!(
        std::fs::read(f.root.join("whole.parquet")).unwrap(),
        bytes,
        "same flags: same bytes"
    );
    for shard in 0..2 {
        let s = shard.to_string();
        f.score(
            "rollouts.parquet",
            "parts",
            &[&flags[..], &["--num-shards", "2", "--shard-index", &s]].concat(),
        );
    }
    let parts = ScoresTable::read(&f.root.join("parts")).unwrap().0;
    assert_eq!(parts.rollout_id.len(), whole.rollout_id.len());
    assert_eq!(
        rows_of(&parts),
        rows_of(&whole),
        "shards together equal the unsharded scores"
    );
    // On CPU without --pack-prompts each prompt is one reward-model batch whatever
    // --batch-size says (the summary counts the batches run): the same scores.
    let rollouts = read_records::<RolloutRow>(&f.root.join("rollouts.parquet"))
        .unwrap()
        .0;
    let prompts = rollouts
        .iter()
        .map(|r| &r.prompt_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert!(prompts > 1);
    let summary = f.p("b1.json");
    let b1 = f.score(
        "rollouts.parquet",
        "b1.parquet",
        &[
            &flags[..],
            &["--batch-size", "1", "--summary-json", &summary],
        ]
        .concat(),
    );
    assert_eq!(
        rows_of(&b1),
        rows_of(&whole),
        "batch size does not change scores"
    );
    assert_eq!(
        rlhf_testkit::forward_batches(&summary),
        prompts,
        "one batch per prompt"
    );
    // --pack-prompts: every prompt in one batch, the same scores within float rounding.
    let summary = f.p("packed.json");
    let packed = f.score(
        "rollouts.parquet",
        "packed.parquet",
        &[
            &flags[..],
            &[
                "--pack-prompts",
                "--batch-size",
                "1000",
                "--summary-json",
                &summary,
            ],
        ]
        .concat(),
    );
    assert_eq!(
        rlhf_testkit::forward_batches(&summary),
        1,
        "all prompts in one batch"
    );
    let (p, w) = (rows_of(&packed), rows_of(&whole));
    assert_eq!(p.len(), w.len());
    for (a, b) in p.iter().zip(&w) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() < 1e-4,
            "{}: reward {} vs {}",
            a.0,
            a.1,
            b.1
        );
        for (x, y) in a.3.iter().zip(&b.3) {
            assert!(
                (x.unwrap_or(0.0) - y.unwrap_or(0.0)).abs() < 1e-4,
                "{}",
                a.0
            );
        }
    }
}

#[test]
fn foreign_tokenizer_is_refused_unless_retokenized() {
    let f = Fixture::new();
    let (r, o, m, rm) = (
        f.p("foreign.parquet"),
        f.p("s.parquet"),
        f.p("model"),
        f.p("rm"),
    );
    let (code, _, err) = run(&[
        "--rollouts",
        &r,
        "--out",
        &o,
        "--device",
        "cpu",
        "--model",
        &m,
        "--reward-model",
        &rm,
    ]);
    assert_eq!(code, 3, "{err}");
    let ours = Tokenizer::from_dir(&f.root.join("model"))
        .unwrap()
        .hash()
        .to_string();
    assert!(err.contains("tokenizer mismatch"), "{err}");
    assert!(
        err.contains("foreign.parquet") && err.contains("0123456789abcdef"),
        "{err}"
    );
    assert!(err.contains(&ours) && err.contains("--retokenize"), "{err}");
    assert!(!Path::new(&o).exists());
    // The text decodes to the same ids here, so re-tokenizing reproduces the scores.
    let retok = f.score(
        "foreign.parquet",
        "retok.parquet",
        &["--model", &m, "--reward-model", &rm, "--retokenize"],
    );
    let direct = f.score(
        "rollouts.parquet",
        "direct.parquet",
        &["--model", &m, "--reward-model", &rm],
    );
    let (a, b) = (retok.source("rm").unwrap(), direct.source("rm").unwrap());
    for i in 0..a.len() {
        assert!(
            (a[i].unwrap() - b[i].unwrap()).abs() < 1e-5,
            "row {i}: {a:?} vs {b:?}"
        );
    }
    let lineage = read_lineage(&f.root.join("retok.parquet"))
        .unwrap()
        .unwrap();
    assert_eq!(lineage.tokenizer_hash.as_deref(), Some(ours.as_str()));
}

#[test]
fn errors_exit_with_clear_messages() {
    let f = Fixture::new();
    let (r, o) = (f.p("rollouts.parquet"), f.p("s.parquet"));
    let m = f.p("model");
    let base = [
        "--rollouts",
        r.as_str(),
        "--out",
        o.as_str(),
        "--device",
        "cpu",
    ];
    for (extra, code, needle) in [
        (vec![], 2, "nothing to score"),
        (vec!["--reward-model", "x"], 2, "needs --model"),
        (vec!["--rule", "length"], 2, "needs target=N"),
        (vec!["--rule", "gold", "--bogus"], 2, "--bogus"),
        (
            vec!["--rule", "length:target=1,weight=3e38"],
            2,
            "the weighted reward is -inf",
        ),
        (
            vec!["--model", m.as_str(), "--reward-model", m.as_str()],
            3,
            "adapter_config.json",
        ),
    ] {
        let (c, _, err) = run(&[&base[..], &extra[..]].concat());
        assert_eq!(c, code, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // A prompts file is not a rollouts file.
    let prompts = f.root.join("prompts.parquet");
    rlhf_core::parquet_io::write_records::<rlhf_core::records::PromptRow>(
        &prompts,
        &[],
        &rlhf_core::lineage::Lineage::new("t", "0", rlhf_core::schema::Artifact::Prompts),
    )
    .unwrap();
    let (c, _, err) = run(&[
        "--rollouts",
        prompts.to_str().unwrap(),
        "--out",
        &o,
        "--rule",
        "gold",
    ]);
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("not a valid `rollouts` file"), "{err}");
}
