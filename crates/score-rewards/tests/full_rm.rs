//! Fully tuned reward models (`train-rm-lora --full`: a *ForSequenceClassification folder
//! with its own tokenizer): scores equal the folder's own model loaded directly and
//! normalised by its rlhf_state.json, a folder without that file is scored raw, a folder
//! transformers wrote scores as transformers does, ensembles mix adapters and full models,
//! --model is needed only for adapters, and unusable folders are refused with exit 3
//! naming them.

mod common;

use std::path::{Path, PathBuf};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_lineage, write_records};
use rlhf_core::records::{PreferenceRow, RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::Model;
use tch::{Device, Kind};

use common::{reward_adapter, rollouts, run, tiny_model, write_rollouts};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rows: Vec<RolloutRow>,
}

/// Preference pairs on the word tokenizer: chosen responses hold low word ids, rejected
/// ones high ids; every 4th pair is held out (the normalisation's reference set).
fn pairs(n: usize) -> Vec<PreferenceRow> {
    let words = |ids: &[usize]| {
        ids.iter()
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (0..n)
        .map(|i| PreferenceRow {
            pair_id: format!("pair{i}"),
            prompt_id: format!("q{i}"),
            group_id: None,
            prompt: words(&[20 + i % 7, 30 + i % 5]),
            chosen: words(&[100 + i % 9, 110 + i % 4]),
            rejected: words(&[300 + i % 9, 310 + i % 4, 320]),
            label: 1.0,
            margin: None,
            weight: 1.0,
            split: if i % 4 == 3 { "eval" } else { "train" }.into(),
            source: "test".into(),
            prompt_tokens: None,
            chosen_tokens: None,
            rejected_tokens: None,
        })
        .collect()
}

/// Runs `train-rm-lora` (its library, in this process) with `args`.
fn train_rm_lora(args: &[&str]) {
    use clap::Parser;
    let fixed = [
        "train-rm-lora",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ];
    let cli = train_rm_lora::args::Cli::try_parse_from([&fixed[..], args].concat())
        .expect("train-rm-lora flags parse");
    train_rm_lora::run::run(&cli).expect("train-rm-lora --full runs");
}

impl Fixture {
    /// A tiny base (`model`), a LoRA reward adapter on it (`adapter`), a reward model
    /// trained with `train-rm-lora --full` (`full`), and rollouts with the base's
    /// tokenizer (`rollouts.parquet`) and with a foreign one (`foreign.parquet`).
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model_dir = root.join("model");
        let mut model = tiny_model(&model_dir, 3);
        reward_adapter(
            &mut model,
            &model_dir,
            "rm",
            &root.join("adapter"),
            7,
            -0.25,
            2.0,
        );
        let hash = Tokenizer::from_dir(&model_dir).unwrap().hash().to_string();
        let prefs = root.join("prefs.parquet");
        let lineage =
            Lineage::new("test", "0", Artifact::Preferences).with_tokenizer(Some(hash.clone()));
        write_records(&prefs, &pairs(32), &lineage).unwrap();
        let (m, p, o) = (
            model_dir.display().to_string(),
            prefs.display().to_string(),
            root.join("full").display().to_string(),
        );
        train_rm_lora(&[
            "--model",
            &m,
            "--preferences",
            &p,
            "--out",
            &o,
            "--full",
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--learning-rate",
            "0.01",
            "--normalize-scale",
        ]);
        let rows = rollouts(4, 3);
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

    /// Copies the full reward model folder to `name` (to spoil it).
    fn copy_full(&self, name: &str) -> PathBuf {
        let to = self.root.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(self.root.join("full")).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        to
    }

    /// Runs score-rewards on `rollouts` into `out` with `extra` flags.
    fn run(&self, rollouts: &str, out: &str, extra: &[&str]) -> (i32, String) {
        let (r, o) = (self.p(rollouts), self.p(out));
        let args = [
            &[
                "--rollouts",
                r.as_str(),
                "--out",
                o.as_str(),
                "--device",
                "cpu",
            ][..],
            extra,
        ]
        .concat();
        let (code, _, stderr) = run(&args);
        (code, stderr)
    }

    /// Scores `rollouts` into `out`; panics unless it succeeds.
    fn score(&self, rollouts: &str, out: &str, extra: &[&str]) -> ScoresTable {
        let (code, stderr) = self.run(rollouts, out, extra);
        assert_eq!(code, 0, "score-rewards failed: {stderr}");
        ScoresTable::read(&self.root.join(out)).unwrap().0
    }

    /// The raw scores of the rollouts by the model in `dir`, loaded with rlhf_nn and run
    /// one rollout at a time on the rollouts' token ids.
    fn direct_raw_scores(&self, dir: &Path) -> Vec<f64> {
        let _guard = tch::no_grad_guard();
        let model = Model::load(dir, Device::Cpu, Kind::Float).unwrap();
        let pad = Tokenizer::from_dir(dir).unwrap().pad_id as i32;
        self.rows
            .iter()
            .map(|r| {
                let seq = (r.prompt_tokens.clone(), r.response_tokens.clone());
                let batch = SeqBatch::new(&[seq], pad, Device::Cpu).unwrap();
                let s = rlhf_nn::scoring::last_token_scores(&model, None, &batch, false).unwrap();
                Vec::<f32>::try_from(s).unwrap()[0] as f64
            })
            .collect()
    }
}

/// `reward_bias` and `reward_scale` of a folder's rlhf_state.json.
fn normalisation(dir: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(dir.join("rlhf_state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["full"], true, "{text}");
    (
        v["reward_bias"].as_f64().unwrap(),
        v["reward_scale"].as_f64().unwrap(),
    )
}

fn column(t: &ScoresTable, name: &str) -> Vec<f32> {
    t.source(name)
        .unwrap_or_else(|| panic!("no column `{name}`"))
        .iter()
        .map(|v| v.unwrap())
        .collect()
}

#[test]
fn full_reward_model_scores_equal_the_folder_loaded_directly() {
    let f = Fixture::new();
    let full = f.root.join("full");
    let (bias, scale) = normalisation(&full);
    assert!(
        bias.abs() > 1e-6 && (scale - 1.0).abs() > 1e-6,
        "the test needs a normalisation that changes scores: bias {bias}, scale {scale}"
    );
    // No --model: a full reward model brings its own weights and tokenizer.
    let spec = format!("{}:0.5", f.p("full"));
    let t = f.score(
        "rollouts.parquet",
        "s.parquet",
        &["--reward-model", &spec, "--eos-penalty=-1"],
    );
    let names: Vec<&str> = t.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rm"]);
    let raw = f.direct_raw_scores(&full);
    let rm = column(&t, "rm");
    for (i, row) in f.rows.iter().enumerate() {
        assert_eq!(t.rollout_id[i], row.rollout_id);
        let expected = (raw[i] + bias) * scale;
        assert!(
            (rm[i] as f64 - expected).abs() < 1e-4 * scale.max(1.0),
            "row {i}: rm {} vs {expected} (raw {})",
            rm[i],
            raw[i]
        );
        let penalty = if row.finish_reason == "eos" {
            0.0
        } else {
            -1.0
        };
        assert_eq!(t.penalty[i], penalty);
        assert!(
            (t.reward[i] - (0.5 * rm[i] + penalty)).abs() < 1e-6,
            "row {i}: reward {} from rm {}",
            t.reward[i],
            rm[i]
        );
    }
    let spread = rm.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - rm.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!(spread > 1e-3, "the fixture should give distinct scores");
    // Lineage: the folder's content is an input, no base model is; its tokenizer recorded.
    let lineage = read_lineage(&f.root.join("s.parquet")).unwrap().unwrap();
    let roles: Vec<&str> = lineage.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(roles, ["rollouts", "reward_model:rm"]);
    assert_eq!(
        lineage.inputs[1].blake3,
        rlhf_core::hash::dir_hash(&full).unwrap()
    );
    let hash = Tokenizer::from_dir(&full).unwrap().hash().to_string();
    assert_eq!(lineage.tokenizer_hash.as_deref(), Some(hash.as_str()));

    // The same folder without rlhf_state.json (as transformers writes one): raw scores.
    let bare = f.copy_full("bare");
    std::fs::remove_file(bare.join("rlhf_state.json")).unwrap();
    let (code, stderr) = f.run(
        "rollouts.parquet",
        "raw.parquet",
        &["--reward-model", &f.p("bare")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no rlhf_state.json"), "{stderr}");
    let t = ScoresTable::read(&f.root.join("raw.parquet")).unwrap().0;
    for (i, (got, want)) in column(&t, "rm").iter().zip(&raw).enumerate() {
        assert!(
            (*got as f64 - want).abs() < 1e-4,
            "row {i}: {got} vs {want}"
        );
    }
}

#[test]
fn ensembles_mix_adapters_and_full_models() {
    let f = Fixture::new();
    let (m, a, full) = (f.p("model"), f.p("adapter"), f.p("full"));
    let t = f.score(
        "rollouts.parquet",
        "mix.parquet",
        &[
            "--model",
            &m,
            "--reward-model",
            &a,
            "--reward-model",
            &full,
            "--rm-std-penalty",
            "0.5",
        ],
    );
    let names: Vec<&str> = t.sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rm_0", "rm_1", "rm_mean", "rm_std"]);
    let adapter = f.score(
        "rollouts.parquet",
        "adapter.parquet",
        &["--model", &m, "--reward-model", &a],
    );
    let alone = f.score(
        "rollouts.parquet",
        "full.parquet",
        &["--reward-model", &full],
    );
    let (x, y) = (column(&t, "rm_0"), column(&t, "rm_1"));
    assert_eq!(x, column(&adapter, "rm"), "member 0 is the adapter");
    assert_eq!(y, column(&alone, "rm"), "member 1 is the full model");
    assert_ne!(x, y);
    let (mean, std) = (column(&t, "rm_mean"), column(&t, "rm_std"));
    for i in 0..t.reward.len() {
        let (mu, sd) = ((x[i] + y[i]) / 2.0, (x[i] - y[i]).abs() / 2.0);
        assert!((mean[i] - mu).abs() < 1e-6, "row {i}");
        assert!((std[i] - sd).abs() < 1e-6, "row {i}");
        assert!((t.reward[i] - (mu - 0.5 * sd)).abs() < 1e-5, "row {i}");
    }
    let lineage = read_lineage(&f.root.join("mix.parquet")).unwrap().unwrap();
    let roles: Vec<&str> = lineage.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "rollouts",
            "model",
            "reward_model:rm_0",
            "reward_model:rm_1"
        ]
    );
}

#[test]
fn model_is_needed_only_for_adapters() {
    let f = Fixture::new();
    let (m, a, full) = (f.p("model"), f.p("adapter"), f.p("full"));
    let without = f.score("rollouts.parquet", "a.parquet", &["--reward-model", &full]);
    // An unused --model is ignored (with a warning), and stays out of the lineage.
    let (code, stderr) = f.run(
        "rollouts.parquet",
        "b.parquet",
        &["--model", &m, "--reward-model", &full],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("is not used"), "{stderr}");
    let with = ScoresTable::read(&f.root.join("b.parquet")).unwrap().0;
    assert_eq!(column(&with, "rm"), column(&without, "rm"));
    for extra in [
        vec!["--reward-model", a.as_str()],
        vec![
            "--reward-model",
            full.as_str(),
            "--reward-model",
            a.as_str(),
        ],
    ] {
        let (code, stderr) = f.run("rollouts.parquet", "c.parquet", &extra);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(
            stderr.contains("needs --model") && stderr.contains(&a),
            "{stderr}"
        );
        assert!(!f.root.join("c.parquet").exists());
    }
}

#[test]
fn unusable_full_folders_and_foreign_tokens_are_refused() {
    let f = Fixture::new();
    // A causal LM is no reward model.
    let m = f.p("model");
    // A *ForSequenceClassification config whose weights have no score head.
    let headless = f.root.join("headless");
    std::fs::create_dir_all(&headless).unwrap();
    for e in std::fs::read_dir(f.root.join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), headless.join(e.file_name())).unwrap();
    }
    let cfg_path = headless.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // rlhf_state.json records another tokenizer than the folder's tokenizer.json.
    let retok = f.copy_full("other-tokenizer");
    let state_path = retok.join("rlhf_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["tokenizer_hash"] = serde_json::json!("fedcba9876543210");
    std::fs::write(&state_path, state.to_string()).unwrap();
    // Two labels.
    let two = f.copy_full("two-labels");
    let cfg_path = two.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_labels"] = serde_json::json!(2);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (headless, retok, two) = (f.p("headless"), f.p("other-tokenizer"), f.p("two-labels"));
    for (spec, needle) in [
        (m.as_str(), "ForSequenceClassification"),
        (headless.as_str(), "score.weight"),
        (retok.as_str(), "fedcba9876543210"),
        (two.as_str(), "2 labels"),
    ] {
        let (code, stderr) = f.run("rollouts.parquet", "s.parquet", &["--reward-model", spec]);
        assert_eq!(code, 3, "{spec}: {stderr}");
        assert!(
            stderr.contains(spec) && stderr.contains(needle),
            "{spec}: {stderr}"
        );
        assert!(!f.root.join("s.parquet").exists());
    }
    // Rollouts made with another tokenizer: refused, naming the reward model folder,
    // unless --retokenize (the word tokenizer round-trips, so the scores are the same).
    let full = f.p("full");
    let (code, stderr) = f.run("foreign.parquet", "s.parquet", &["--reward-model", &full]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("tokenizer mismatch")
            && stderr.contains(&full)
            && stderr.contains("0123456789abcdef")
            && stderr.contains("--retokenize"),
        "{stderr}"
    );
    let retokenized = f.score(
        "foreign.parquet",
        "retok.parquet",
        &["--reward-model", &full, "--retokenize"],
    );
    let direct = f.score(
        "rollouts.parquet",
        "direct.parquet",
        &["--reward-model", &full],
    );
    let (a, b) = (column(&retokenized, "rm"), column(&direct, "rm"));
    for i in 0..a.len() {
        assert!((a[i] - b[i]).abs() < 1e-5, "row {i}: {a:?} vs {b:?}");
    }
}

const TRANSFORMERS_SCRIPT: &str = r#"
import json, os, shutil, sys, torch
from transformers import AutoModelForSequenceClassification
torch.set_num_threads(1)
a = json.load(open(sys.argv[1]))
model = AutoModelForSequenceClassification.from_pretrained(a["full"], dtype=torch.float32).eval()
model.save_pretrained(a["out"])
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(a["full"], f), a["out"])
# one sequence per call, pad_token_id as saved: transformers scores the last token that is
# not the pad id (before a trailing EOS when the two are one token), as score-rewards must
with torch.no_grad():
    out = [float(model(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in a["seqs"]]
print(json.dumps(out))
"#;

#[test]
fn folders_written_by_transformers_score_as_transformers_does() {
    let f = Fixture::new();
    let theirs = common::python_reference(
        &f.root,
        "hf",
        TRANSFORMERS_SCRIPT,
        serde_json::json!({"full": f.p("full"), "out": f.p("hf"), "seqs": common::sequences(&f.rows)}),
    );
    assert!(!f.root.join("hf/rlhf_state.json").exists());
    let (code, stderr) = f.run(
        "rollouts.parquet",
        "hf.parquet",
        &["--reward-model", &f.p("hf")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no rlhf_state.json"), "{stderr}");
    let t = ScoresTable::read(&f.root.join("hf.parquet")).unwrap().0;
    let rm = column(&t, "rm");
    assert_eq!(rm.len(), theirs.len());
    let err = rm
        .iter()
        .zip(&theirs)
        .map(|(ours, want)| (*ours as f64 - want).abs())
        .fold(0.0, f64::max);
    eprintln!("max |score-rewards - transformers|: {err:.2e}");
    // float32 on different kernels, scores O(1)
    assert!(err < 1e-4, "{rm:?} vs transformers {theirs:?}");
}
