//! The trained adapter loads in peft (AutoModelForSequenceClassification + PeftModel, the
//! Python reference environment) and gives the scores our scorer gives, within 1e-4, for
//! a Llama and a GPT-2 base.

mod common;

use std::path::Path;

use common::*;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::scoring::last_token_scores;
use rlhf_nn::Model;
use rlhf_testkit::python_last_line;
use tch::{Device, Kind};

const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoModelForSequenceClassification
from peft import PeftModel
base, adapter, seqs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
m = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
m.config.pad_token_id = 0
m = PeftModel.from_pretrained(m, adapter).eval()
with torch.no_grad():
    print(json.dumps([m(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]))
"#;

fn check(preset: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = preset_model(&dir.path().join("base"), preset, 9);
    let prefs = dir.path().join("prefs.parquet");
    write_prefs(&prefs, &separable_pairs(64), None);
    let out = dir.path().join("rm");
    ok(&run(&[
        "--model",
        model.to_str().unwrap(),
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-rank",
        "4",
        "--lora-alpha",
        "12",
        "--learning-rate",
        "0.01",
        "--max-steps",
        "12",
        "--batch-size",
        "4",
    ]));
    // Token sequences (BOS-first, no pad token inside).
    let seqs: Vec<Vec<i32>> = vec![
        vec![1, 6, 7, 4, 9],
        vec![1, 6, 7, 5, 9],
        vec![1, 10, 4, 12, 13, 14, 2],
        vec![1, 8],
    ];
    let mut m = Model::load(&model, Device::Cpu, Kind::Float).unwrap();
    m.load_adapter("rm", &out).unwrap();
    let ours: Vec<f64> = seqs
        .iter()
        .map(|s| {
            let b = SeqBatch::new(&[(&s[..1], &s[1..])], 0, Device::Cpu).unwrap();
            last_token_scores(&m, Some("rm"), &b, false)
                .unwrap()
                .double_value(&[0])
        })
        .collect();
    // The adapter is not trivial: the LoRA branch changes the scores of the base + head.
    let lora_b = rlhf_nn::peft::read_adapter_tensors(&out).unwrap();
    let moved = lora_b
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .any(|(_, t)| t.abs().max().double_value(&[]) > 1e-6);
    assert!(moved, "lora_B stayed zero");
    let seq_file = dir.path().join("seqs.json");
    std::fs::write(&seq_file, serde_json::to_string(&seqs).unwrap()).unwrap();
    let script = dir.path().join("score.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let line = python_last_line([
        script.as_path(),
        model.as_path(),
        out.as_path(),
        seq_file.as_path(),
    ]);
    let theirs: Vec<f64> = serde_json::from_str(&line).unwrap();
    eprintln!("{preset}: ours {ours:?}\n{preset}: peft {theirs:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(
            (a - b).abs() < 1e-4,
            "{preset}: ours {ours:?} vs peft {theirs:?}"
        );
    }
    assert!(Path::new(&out.join("rlhf_state.json")).is_file());
}

#[test]
fn llama_adapter_scores_match_peft() {
    check("llama-tiny");
}

#[test]
fn gpt2_adapter_scores_match_peft() {
    check("gpt2-tiny");
}
