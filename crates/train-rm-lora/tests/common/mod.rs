//! Test fixtures: a tiny random Llama with a word-level tokenizer, a separable preference
//! task ("good" in the chosen response, "bad" in the rejected one), thumbs ratings, and
//! helpers to run the binary and read its outputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{PreferenceRow, RatingRow};
use rlhf_core::schema::Artifact;
use rlhf_nn::{Model, ModelConfig};
use serde_json::json;
use tch::{Device, Kind};

/// Words of the toy vocabulary (after the special tokens).
pub const WORDS: usize = 24;

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["<pad>", "<bos>", "<eos>", "<unk>", "good", "bad"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend((0..WORDS).map(|i| format!("w{i}")));
    v
}

/// Writes tokenizer.json (word level, whitespace split) and tokenizer_config.json.
pub fn write_tokenizer(dir: &Path) {
    let words = vocab();
    let added: Vec<serde_json::Value> = words[..4]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({"id": i, "content": w, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let map: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), json!(i)))
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                     "unk_token": "<unk>", "add_bos_token": true});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// A tiny random Llama model folder (llama-tiny preset, our vocabulary).
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    preset_model(dir, "llama-tiny", seed)
}

/// A random model folder of an rlhf-nn preset with our vocabulary.
pub fn preset_model(dir: &Path, preset: &str, seed: u64) -> PathBuf {
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = vocab().len() as i64;
    let m = Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap();
    m.save_pretrained(dir).unwrap();
    write_tokenizer(dir);
    dir.to_path_buf()
}

/// A deterministic pseudo-random word index.
fn word(i: usize, k: usize) -> String {
    let h = rlhf_core::hash::unit_interval(&format!("{i}:{k}"));
    format!("w{}", (h * WORDS as f64) as usize % WORDS)
}

/// The separable task: chosen responses contain "good", rejected ones "bad", at a varying
/// position, followed by filler words. Every 8th pair is held out (split=eval).
pub fn separable_pairs(n: usize) -> Vec<PreferenceRow> {
    (0..n)
        .map(|i| {
            let prompt = format!("{} {} {}", word(i, 0), word(i, 1), word(i, 2));
            let pos = i % 3;
            let resp = |marker: &str| {
                let mut ws: Vec<String> = (0..3).map(|k| word(i, 10 + k)).collect();
                ws.insert(pos, marker.to_string());
                ws.join(" ")
            };
            PreferenceRow {
                pair_id: format!("p{i}"),
                prompt_id: format!("q{i}"),
                group_id: None,
                prompt,
                chosen: resp("good"),
                rejected: resp("bad"),
                label: 1.0,
                margin: None,
                weight: 1.0,
                split: if i % 8 == 7 { "eval" } else { "train" }.into(),
                source: "test".into(),
                prompt_tokens: None,
                chosen_tokens: None,
                rejected_tokens: None,
            }
        })
        .collect()
}

/// Thumbs ratings on the same task, skewed: 3 of 4 responses are thumbs up ("good").
pub fn skewed_ratings(n: usize) -> Vec<RatingRow> {
    (0..n)
        .map(|i| {
            let up = i % 4 != 0;
            let marker = if up { "good" } else { "bad" };
            RatingRow {
                rating_id: format!("r{i}"),
                prompt_id: format!("q{i}"),
                prompt: format!("{} {}", word(i, 0), word(i, 1)),
                response: format!("{} {marker} {}", word(i, 5), word(i, 6)),
                rating: if up { 1.0 } else { 0.0 },
                split: if i % 5 == 4 { "eval" } else { "train" }.into(),
                source: "test".into(),
                prompt_tokens: None,
                response_tokens: None,
            }
        })
        .collect()
}

/// Writes preference rows with a lineage (optionally claiming a tokenizer hash).
pub fn write_prefs(path: &Path, rows: &[PreferenceRow], tokenizer_hash: Option<&str>) {
    let l = Lineage::new("test", "0", Artifact::Preferences)
        .with_tokenizer(tokenizer_hash.map(String::from));
    write_records(path, rows, &l).unwrap();
}

/// Writes rating rows.
pub fn write_ratings(path: &Path, rows: &[RatingRow]) {
    let l = Lineage::new("test", "0", Artifact::Ratings);
    write_records(path, rows, &l).unwrap();
}

/// Runs the binary with `args` (plus --no-progress, one thread).
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train-rm-lora"))
        .args(args)
        .args(["--no-progress", "--threads", "1", "--device", "cpu"])
        .output()
        .unwrap()
}

/// Asserts success, printing stderr otherwise.
#[allow(unused_imports)] // not every test binary uses it
pub use rlhf_testkit::assert_success as ok;

/// The last value of a metric in a metrics.parquet.
pub fn last_metric(path: &Path, metric: &str) -> Option<f64> {
    rlhf_core::metrics::MetricsLog::read(path, "train-rm-lora", 0)
        .unwrap()
        .last(metric)
}
