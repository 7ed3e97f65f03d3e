//! Test fixtures: a tiny random Llama model folder with a word-level tokenizer (every id
//! decodes to one word, so ids round-trip through text), reward adapters with random LoRA
//! weights and score head plus an rlhf_state.json, and rollouts files.

#![allow(dead_code)]

use std::path::Path;

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::RolloutRow;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::{HeadKind, LoraConfig, Model, ModelConfig};
pub use rlhf_testkit::{python, EOS};
use rlhf_testkit::{randomize_adapter, write_word_tokenizer, Redraw};
use tch::{Device, Kind};

/// A tiny random Llama saved with its tokenizer in `dir`.
pub fn tiny_model(dir: &Path, seed: u64) -> Model {
    let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
    cfg.initializer_range = 0.2;
    let model = Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap();
    model.save_pretrained(dir).unwrap();
    write_word_tokenizer(dir, cfg.vocab_size as usize);
    model
}

/// A reward adapter with random LoRA weights and score head, saved to `dir` with an
/// rlhf_state.json holding `bias` and `scale` (and the base's tokenizer hash and id).
pub fn reward_adapter(
    model: &mut Model,
    model_dir: &Path,
    name: &str,
    dir: &Path,
    seed: i64,
    bias: f64,
    scale: f64,
) {
    let cfg = LoraConfig::default_for(model.config().arch);
    model
        .add_adapter(name, &cfg, Some(HeadKind::Score), seed as u64)
        .unwrap();
    randomize_adapter(model, name, Redraw::All, 0.3, seed);
    model.save_adapter(name, dir).unwrap();
    let tok = Tokenizer::from_dir(model_dir).unwrap();
    let state = serde_json::json!({
        "format_version": 1,
        "kind": "reward_model",
        "reward_formula": "reward = (raw + reward_bias) * reward_scale",
        "reward_bias": bias,
        "reward_scale": scale,
        "base_id": model.base_id(),
        "tokenizer_hash": tok.hash(),
        "full": false,
    });
    std::fs::write(
        dir.join("rlhf_state.json"),
        serde_json::to_string_pretty(&state).unwrap(),
    )
    .unwrap();
}

/// `n_prompts` x `k` rollouts with word responses; the response of sample s of prompt p
/// has 2 + (p + s) % 5 words, and every third one ends with EOS.
pub fn rollouts(n_prompts: usize, k: usize) -> Vec<RolloutRow> {
    let mut rows = Vec::new();
    for p in 0..n_prompts {
        let prompt_tokens: Vec<i32> = (0..(2 + p % 3)).map(|j| (20 + p * 3 + j) as i32).collect();
        let prompt = prompt_tokens
            .iter()
            .map(|t| format!("w{t}"))
            .collect::<Vec<_>>()
            .join(" ");
        for s in 0..k {
            let n = 2 + (p + s) % 5;
            let mut tokens: Vec<i32> = (0..n)
                .map(|j| (100 + (p * 7 + s * 13 + j * 5) % 400) as i32)
                .collect();
            let response = tokens
                .iter()
                .map(|t| format!("w{t}"))
                .collect::<Vec<_>>()
                .join(" ");
            let eos = (p + s) % 3 == 0;
            if eos {
                tokens.push(EOS);
            }
            let len = tokens.len();
            rows.push(RolloutRow {
                rollout_id: format!("r{p:02}-{s}"),
                prompt_id: format!("p{p:02}"),
                iteration: 1,
                sample_index: s as i32,
                prompt: prompt.clone(),
                messages: None,
                response,
                prompt_tokens: prompt_tokens.clone(),
                response_tokens: tokens,
                logprobs: vec![-1.0; len],
                ref_logprobs: Some(vec![-1.1; len]),
                finish_reason: if eos { "eos".into() } else { "length".into() },
                policy_id: "base".into(),
                seed: (p * 10 + s) as u64,
            });
        }
    }
    rows
}

/// Writes rollouts with `tokenizer` recorded in the lineage.
pub fn write_rollouts(path: &Path, rows: &[RolloutRow], tokenizer: Option<&str>) {
    let lineage =
        Lineage::new("test", "0", Artifact::Rollouts).with_tokenizer(tokenizer.map(String::from));
    write_records(path, rows, &lineage).unwrap();
}

/// Runs the binary, one thread, no progress bar; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_at(Path::new(env!("CARGO_BIN_EXE_score-rewards")), args)
}

/// [`run`] with the score-rewards binary at `bin`.
pub fn run_at(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let fixed = ["--no-progress", "--threads", "1"];
    rlhf_testkit::run(bin, &[args, &fixed].concat())
}

/// Prompt + response token ids of each rollout (what a reward model scores).
pub fn sequences(rows: &[RolloutRow]) -> Vec<Vec<i32>> {
    rows.iter()
        .map(|r| {
            r.prompt_tokens
                .iter()
                .chain(&r.response_tokens)
                .copied()
                .collect()
        })
        .collect()
}

/// Runs a Python reference `script` (written to `dir/name.py`) on `input` (written to
/// `dir/name.json`) and returns the numbers it prints as a JSON list.
pub fn python_reference(
    dir: &Path,
    name: &str,
    script: &str,
    input: serde_json::Value,
) -> Vec<f64> {
    let (script_path, input_path) = (
        dir.join(format!("{name}.py")),
        dir.join(format!("{name}.json")),
    );
    std::fs::write(&script_path, script).unwrap();
    std::fs::write(&input_path, input.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg(&script_path)
        .arg(&input_path)
        .output()
        .expect("the Python reference runs");
    assert!(
        out.status.success(),
        "{name}.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
