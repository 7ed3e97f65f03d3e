//! Test fixtures: a tiny random Llama model folder with a word-level tokenizer (every id
//! decodes to one word, so ids round-trip through text), reward adapters with random LoRA
//! weights and score head plus an rlhf_state.json, and rollouts files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::RolloutRow;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::{HeadKind, LoraConfig, Model, ModelConfig};
use tch::{Device, Kind, Tensor};

/// Id of the EOS token `</s>`.
pub const EOS: i32 = 1;

/// Writes tokenizer.json (WordLevel: `<unk>`, `</s>`, then `w2` .. `w{vocab-1}`) and
/// tokenizer_config.json into `dir`.
pub fn write_tokenizer(dir: &Path, vocab: usize) {
    let mut entries = vec!["\"<unk>\": 0".to_string(), "\"</s>\": 1".to_string()];
    entries.extend((2..vocab).map(|i| format!("\"w{i}\": {i}")));
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{{"id":1,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,
"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
        entries.join(",")
    );
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>", "pad_token": "</s>"}"#,
    )
    .unwrap();
}

/// A tiny random Llama saved with its tokenizer in `dir`.
pub fn tiny_model(dir: &Path, seed: u64) -> Model {
    let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
    cfg.initializer_range = 0.2;
    let model = Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap();
    model.save_pretrained(dir).unwrap();
    write_tokenizer(dir, cfg.vocab_size as usize);
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
    tch::manual_seed(seed);
    {
        let _guard = tch::no_grad_guard();
        for (_, mut t) in model.adapter_named_parameters(name).unwrap() {
            let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.3;
            t.copy_(&r);
        }
    }
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

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_score-rewards"))
        .args(args)
        .args(["--no-progress", "--threads", "1"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The project's Python (RLHF_PYTHON, else scripts/setup-python.sh's environment).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("RLHF_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join("scripts/setup-python.sh"))
        .output()
        .expect("scripts/setup-python.sh runs");
    assert!(
        out.status.success(),
        "setup-python.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}
