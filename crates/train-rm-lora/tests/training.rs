//! End-to-end training runs of the binary on tiny models: the separable task is learned
//! (LoRA and --full), thumbs ratings train through BCE, ranking groups train, an ensemble
//! writes its members, and a killed run resumes to the same adapter.

mod common;

use std::path::Path;

use common::*;
use train_rm_lora::state::{EnsembleIndex, RewardState};

fn setup(root: &Path) -> (String, String) {
    let model = tiny_model(&root.join("base"), 11);
    let prefs = root.join("prefs.parquet");
    write_prefs(&prefs, &separable_pairs(160), None);
    (model.display().to_string(), prefs.display().to_string())
}

const FAST: [&str; 8] = [
    "--learning-rate",
    "0.01",
    "--batch-size",
    "8",
    "--warmup-steps",
    "2",
    "--max-grad-norm",
    "1.0",
];

#[test]
fn lora_learns_the_separable_task_and_normalises() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prefs) = setup(dir.path());
    let out = dir.path().join("rm");
    let o = run(&[
        &[
            "--model",
            &model,
            "--preferences",
            &prefs,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "3",
            "--eval-every",
            "10",
            "--record-timings",
        ][..],
        &FAST[..],
    ]
    .concat());
    ok(&o);
    let metrics = out.join("metrics.parquet");
    let acc = last_metric(&metrics, "eval/accuracy").unwrap();
    let first = rlhf_core::metrics::MetricsLog::read(&metrics, "train-rm-lora", 0).unwrap();
    let losses: Vec<f64> = first
        .rows
        .iter()
        .filter(|r| r.metric == "train/loss")
        .map(|r| r.value)
        .collect();
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "eval accuracy {acc}, first loss {}, last-5 mean loss {tail}",
        losses[0]
    );
    assert!(acc >= 0.9, "eval accuracy {acc}");
    assert!(
        tail < 0.35,
        "train loss did not fall: first {} last {tail}",
        losses[0]
    );
    assert!(last_metric(&metrics, "eval/ece").is_some());
    let params = last_metric(&metrics, "run/trainable_params").unwrap();
    assert!(params > 0.0);
    // f32 weights, gradients and two AdamW moments: 16 bytes a trained parameter
    assert_eq!(
        last_metric(&metrics, "run/trained_state_bytes").unwrap(),
        16.0 * params
    );
    assert!(last_metric(&metrics, "run/peak_rss_bytes").unwrap() > 1e6);
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "rlhf_state.json",
        "lineage.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["score"]));
    let targets: Vec<&str> = cfg["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // The default targets of every trainer (PEFT's for Llama-family models).
    assert_eq!(targets, vec!["q_proj", "v_proj"]);
    let st = RewardState::read(&out).unwrap();
    assert_eq!(st.reward_bias, -st.reference.raw_mean);
    assert_eq!(st.reward_scale, 1.0);
    assert_eq!(st.reference.count, 20, "eval chosen responses");
    assert!(st.reference.source.contains("eval chosen"));
    // The normalised reward on the reference set has mean zero: eval chosen mean + bias.
    let chosen_mean = last_metric(&metrics, "eval/reward_chosen_mean").unwrap();
    assert!(
        (st.apply(chosen_mean)).abs() < 1e-4,
        "{} {}",
        chosen_mean,
        st.reward_bias
    );
    assert!(!dir.path().join("rm.checkpoint").exists());
}

#[test]
fn full_tuning_learns_on_the_same_code_path() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prefs) = setup(dir.path());
    let out = dir.path().join("rm-full");
    let o = run(&[
        &[
            "--model",
            &model,
            "--preferences",
            &prefs,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "3",
            "--full",
            "--learning-rate",
            "0.002",
        ][..],
        &FAST[2..],
    ]
    .concat());
    ok(&o);
    let metrics = out.join("metrics.parquet");
    let acc = last_metric(&metrics, "eval/accuracy").unwrap();
    assert!(acc >= 0.9, "eval accuracy {acc}");
    let full_params = last_metric(&metrics, "run/trainable_params").unwrap();
    assert_eq!(
        last_metric(&metrics, "run/trained_state_bytes").unwrap(),
        16.0 * full_params
    );
    let cfg = rlhf_nn::ModelConfig::preset("llama-tiny").unwrap();
    assert!(
        full_params > 0.9 * (cfg.hidden_size * cfg.intermediate_size * 3 * cfg.num_layers) as f64,
        "{full_params}"
    );
    // A transformers *ForSequenceClassification folder that our loader scores directly.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    let m = rlhf_nn::Model::load(&out, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let batch = rlhf_nn::batch::SeqBatch::new(
        &[(vec![1, 6, 7], vec![4, 8]), (vec![1, 6, 7], vec![5, 8])],
        0,
        tch::Device::Cpu,
    )
    .unwrap();
    let s: Vec<f32> =
        Vec::try_from(rlhf_nn::scoring::last_token_scores(&m, None, &batch, false).unwrap())
            .unwrap();
    assert!(s[0] > s[1], "good should outscore bad: {s:?}");
    assert!(RewardState::read(&out).unwrap().full);
}

#[test]
fn thumbs_ratings_train_with_bce_and_report_auc() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("base"), 5);
    let ratings = dir.path().join("ratings.parquet");
    write_ratings(&ratings, &skewed_ratings(160));
    let out = dir.path().join("rm");
    let o = run(&[
        &[
            "--model",
            model.to_str().unwrap(),
            "--ratings",
            ratings.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "3",
        ][..],
        &FAST[..],
    ]
    .concat());
    ok(&o);
    let metrics = out.join("metrics.parquet");
    let auc = last_metric(&metrics, "eval/ratings_auc").unwrap();
    let bacc = last_metric(&metrics, "eval/ratings_balanced_accuracy").unwrap();
    assert!(auc >= 0.95, "auc {auc}");
    assert!(bacc >= 0.85, "balanced accuracy {bacc}");
    assert_eq!(
        last_metric(&metrics, "eval/ratings_positive_fraction"),
        Some(0.75)
    );
    assert!(
        last_metric(&metrics, "eval/accuracy").is_none(),
        "no pairs, no pair accuracy"
    );
    let st = RewardState::read(&out).unwrap();
    assert!(st.reference.source.contains("rated responses"));
}

#[test]
fn ranking_groups_ties_and_ensemble_members() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("base"), 7);
    // Rankings good > plain > bad expanded to 3 pairs per group, plus one tie per group.
    let mut rows = Vec::new();
    for (i, base) in separable_pairs(60).into_iter().enumerate() {
        let plain = base.chosen.replace("good", "w1");
        let g = Some(format!("g{i}"));
        for (k, (c, r, label)) in [
            (&base.chosen, &plain, 1.0),
            (&base.chosen, &base.rejected, 1.0),
            (&plain, &base.rejected, 1.0),
            (&plain, &plain.replace("w1", "w2"), 0.5),
        ]
        .into_iter()
        .enumerate()
        {
            rows.push(rlhf_core::records::PreferenceRow {
                pair_id: format!("{i}-{k}"),
                group_id: g.clone(),
                chosen: c.clone(),
                rejected: r.clone(),
                label,
                ..base.clone()
            });
        }
    }
    let prefs = dir.path().join("ranked.parquet");
    write_prefs(&prefs, &rows, None);
    let out = dir.path().join("ens");
    let o = run(&[
        &[
            "--model",
            model.to_str().unwrap(),
            "--preferences",
            prefs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--ensemble",
            "2",
            "--lora-rank",
            "4",
            "--center-coef",
            "0.01",
            "--normalize-scale",
        ][..],
        &FAST[..],
    ]
    .concat());
    ok(&o);
    let index: EnsembleIndex =
        serde_json::from_str(&std::fs::read_to_string(out.join("ensemble.json")).unwrap()).unwrap();
    assert_eq!(index.members, vec!["member-0", "member-1"]);
    let a = std::fs::read(out.join("member-0/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(out.join("member-1/adapter_model.safetensors")).unwrap();
    assert_ne!(a, b, "bootstrap members differ");
    for m in ["member-0", "member-1"] {
        let st = RewardState::read(&out.join(m)).unwrap();
        assert_eq!(st.ensemble_size, 2);
        assert!((st.reward_scale - 1.0 / st.reference.raw_std).abs() < 1e-9);
        assert!(st.eval["accuracy"] >= 0.8, "{m}: {:?}", st.eval);
        assert_eq!(st.eval["ties"], 7.0, "one tie per eval group");
    }
    let all =
        rlhf_core::metrics::MetricsLog::read(&out.join("metrics.parquet"), "train-rm-lora", 0)
            .unwrap();
    assert!(all
        .rows
        .iter()
        .any(|r| r.iteration == 1 && r.metric == "eval/accuracy"));
}

#[test]
fn killed_run_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prefs) = setup(dir.path());
    let args = |out: &Path| -> Vec<String> {
        [
            &[
                "--model",
                &model,
                "--preferences",
                &prefs,
                "--out",
                out.to_str().unwrap(),
                "--epochs",
                "4",
                "--checkpoint-every",
                "2",
                "--lora-dropout",
                "0.1",
                "--grad-accum",
                "2",
            ][..],
            &FAST[..],
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };
    let straight = dir.path().join("straight");
    let a: Vec<String> = args(&straight);
    ok(&run(&a.iter().map(String::as_str).collect::<Vec<_>>()));

    let resumed = dir.path().join("resumed");
    let b = args(&resumed);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_train-rm-lora"));
    command
        .args(&b)
        .args(["--no-progress", "--threads", "1", "--device", "cpu", "-q"]);
    let member = dir.path().join("resumed.checkpoint/member-0");
    let at = rlhf_testkit::kill_after_checkpoint(&mut command, &member);
    assert!(
        !resumed.exists(),
        "a killed run leaves no finished-looking output"
    );
    let mut c = b.clone();
    c.push("--resume".into());
    let o = run(&c.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&o);
    rlhf_testkit::assert_resumed_from(&o.stderr, at);
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "rlhf_state.json",
    ] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let (s1, s2) = (
        RewardState::read(&straight).unwrap(),
        RewardState::read(&resumed).unwrap(),
    );
    assert_eq!(s1.reward_bias, s2.reward_bias);
}
