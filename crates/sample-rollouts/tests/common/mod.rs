//! Test fixtures: a tiny random Llama model folder with a word-level tokenizer whose every
//! id decodes to a word (so sampled ids round-trip through text), a policy adapter with
//! non-zero LoRA weights, and a prompts file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::PromptRow;
use rlhf_core::schema::Artifact;
use rlhf_nn::{LoraConfig, Model, ModelConfig};
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

/// A tiny random Llama (llama-tiny preset) saved with its tokenizer in `dir`; returns the
/// in-memory model too.
pub fn tiny_model(dir: &Path, seed: u64) -> Model {
    let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
    // Larger weights than the default init give peaked, seed-dependent distributions, so
    // sampling bugs show up as different tokens rather than near-uniform noise.
    cfg.initializer_range = 0.2;
    let model = Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap();
    model.save_pretrained(dir).unwrap();
    write_tokenizer(dir, cfg.vocab_size as usize);
    model
}

/// Adds adapter `name` to `model` with every LoRA weight random (non-zero B), so the
/// adapted model differs from the base, and saves it to `dir`.
pub fn random_adapter(
    model: &mut Model,
    name: &str,
    dir: &Path,
    head: Option<rlhf_nn::HeadKind>,
    seed: i64,
) {
    let cfg = LoraConfig::default_for(model.config().arch);
    model.add_adapter(name, &cfg, head, seed as u64).unwrap();
    tch::manual_seed(seed);
    let _guard = tch::no_grad_guard();
    for (_, mut t) in model.adapter_named_parameters(name).unwrap() {
        let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.3;
        t.copy_(&r.to_device(t.device()));
    }
    model.save_adapter(name, dir).unwrap();
}

/// Writes a prompts file of `n` prompts (`w{i} w{i+1} ...`), tokens null.
pub fn prompts_file(path: &Path, n: usize) {
    let rows: Vec<PromptRow> = (0..n)
        .map(|i| PromptRow {
            prompt_id: format!("p{i:03}"),
            prompt: (0..(2 + i % 4))
                .map(|j| format!("w{}", 10 + i * 3 + j))
                .collect::<Vec<_>>()
                .join(" "),
            messages: None,
            prompt_tokens: None,
            split: if i % 5 == 4 {
                "eval".into()
            } else {
                "train".into()
            },
            source: "test".into(),
            reference: None,
        })
        .collect();
    write_records(path, &rows, &Lineage::new("test", "0", Artifact::Prompts)).unwrap();
}

/// The sample-rollouts binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sample-rollouts"))
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .args(["--device", "cpu", "--no-progress", "--threads", "1"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
