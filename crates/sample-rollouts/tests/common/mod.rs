//! Test fixtures: a tiny random Llama model folder with a word-level tokenizer whose every
//! id decodes to a word (so sampled ids round-trip through text), a policy adapter with
//! non-zero LoRA weights, and a prompts file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{Message, PromptRow};
use rlhf_core::schema::Artifact;
use rlhf_nn::{LoraConfig, Model, ModelConfig};
use rlhf_testkit::{randomize_adapter, write_word_tokenizer, Redraw};
use tch::{Device, Kind};

/// A tiny random Llama (llama-tiny preset) saved with its tokenizer in `dir`; returns the
/// in-memory model too.
pub fn tiny_model(dir: &Path, seed: u64) -> Model {
    tiny_model_with(dir, seed, None, None)
}

/// The preset's vocabulary size (model rows and tokenizer words of [`tiny_model`]).
pub fn tiny_vocab() -> i64 {
    ModelConfig::preset("llama-tiny").unwrap().vocab_size
}

/// Like [`tiny_model`], with `vocab_size` embedding rows and a word tokenizer of
/// `tokenizer_vocab` words instead of the preset's (None: the preset's); a different
/// tokenizer size gives a tokenizer with another content hash.
pub fn tiny_model_with(
    dir: &Path,
    seed: u64,
    vocab_size: Option<i64>,
    tokenizer_vocab: Option<usize>,
) -> Model {
    let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
    // Larger weights than the default init give peaked, seed-dependent distributions, so
    // sampling bugs show up as different tokens rather than near-uniform noise.
    cfg.initializer_range = 0.2;
    let words = tokenizer_vocab.unwrap_or(cfg.vocab_size as usize);
    if let Some(v) = vocab_size {
        cfg.vocab_size = v;
    }
    let model = Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap();
    model.save_pretrained(dir).unwrap();
    write_word_tokenizer(dir, words);
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
    randomize_adapter(model, name, Redraw::All, 0.3, seed);
    model.save_adapter(name, dir).unwrap();
}

/// The user turn of prompt `i` of [`prompts_file`] (even prompts come as chat messages).
pub fn prompt_messages(i: usize) -> Option<Vec<Message>> {
    i.is_multiple_of(2)
        .then(|| vec![Message::new("user", &format!("question {i}"))])
}

/// Writes a prompts file of `n` prompts (`w{i} w{i+1} ...`; even ones with
/// [`prompt_messages`]), tokens null.
pub fn prompts_file(path: &Path, n: usize) {
    let rows: Vec<PromptRow> = (0..n)
        .map(|i| PromptRow {
            prompt_id: format!("p{i:03}"),
            prompt: (0..(2 + i % 4))
                .map(|j| format!("w{}", 10 + i * 3 + j))
                .collect::<Vec<_>>()
                .join(" "),
            messages: prompt_messages(i),
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

/// Runs the binary on the CPU, one thread, no progress bar; returns (exit code, stdout,
/// stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let fixed = ["--device", "cpu", "--no-progress", "--threads", "1"];
    rlhf_testkit::run(&bin(), &[args, &fixed].concat())
}
