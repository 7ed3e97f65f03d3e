//! init-model: the embedded default's starting point. Trains a byte-level BPE tokenizer on
//! text columns of a Parquet file and writes a Hugging Face model folder with random
//! weights, atomically (a temporary sibling folder renamed into place).

pub mod bpe;
pub mod corpus;
pub mod settings;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rlhf_core::atomic::AtomicDir;
use rlhf_core::lineage::Lineage;
use rlhf_core::schema::SCHEMA_VERSION;
use serde_json::json;
use tracing::{info, warn};

pub use settings::{Cli, Settings};

/// Files of the folder written by [`run`] (besides the weights written by rlhf-nn).
pub const LINEAGE_FILE: &str = "lineage.json";

/// Trains the tokenizer, draws the weights and writes the folder.
pub fn run(s: &Settings) -> Result<()> {
    let corpus = corpus::read_text_columns(&s.text_file, &s.text_columns)
        .with_context(|| format!("reading tokenizer text from {}", s.text_file.display()))?;
    info!(
        files = corpus.files.len(),
        rows = corpus.rows,
        texts = corpus.texts.len(),
        empty_values_skipped = corpus.skipped_empty,
        bytes = corpus.chars(),
        "read tokenizer training text"
    );
    let trained = bpe::train(
        &corpus.texts,
        s.vocab_size,
        s.config.max_position_embeddings as usize,
    )
    .context("training the tokenizer")?;
    if trained.vocab_size < s.vocab_size {
        warn!(
            requested = s.vocab_size,
            learned = trained.vocab_size,
            "the text supports fewer merges than --vocab-size; the model keeps {} embedding rows ({} unused)",
            s.vocab_size,
            s.vocab_size - trained.vocab_size
        );
    }
    let cfg = &s.config;
    info!(
        arch = %cfg.model_type,
        hidden = cfg.hidden_size,
        layers = cfg.num_layers,
        heads = cfg.num_heads,
        kv_heads = cfg.num_kv_heads,
        vocab = cfg.vocab_size,
        parameters = cfg.num_parameters(),
        "drawing random weights"
    );
    let out = AtomicDir::new(&s.out)?;
    let model = rlhf_nn::Model::random(cfg, tch::Device::Cpu, tch::Kind::Float, s.seed)
        .context("building the model")?;
    model
        .save_pretrained(out.path())
        .with_context(|| format!("writing weights into {}", out.path().display()))?;
    bpe::write(out.path(), &trained)?;
    let generation = json!({
        "bos_token_id": bpe::BOS_ID,
        "eos_token_id": bpe::EOS_ID,
        "pad_token_id": bpe::PAD_ID,
    });
    write_json(out.path(), "generation_config.json", &generation)?;
    let tokenizer_hash = blake3::hash(trained.tokenizer_json.as_bytes()).to_hex()[..16].to_string();
    let mut lineage = Lineage {
        producer: "init-model".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        args: std::env::args().skip(1).collect(),
        inputs: Vec::new(),
        schema: "model".into(),
        schema_version: SCHEMA_VERSION,
        tokenizer_hash: Some(tokenizer_hash.clone()),
        extra: BTreeMap::new(),
        config: rlhf_core::config::resolved().map(str::to_string),
    };
    for f in &corpus.files {
        lineage.add_input("text", f)?;
    }
    lineage.extra.insert("seed".into(), json!(s.seed));
    lineage
        .extra
        .insert("tokenizer_vocab_size".into(), json!(trained.vocab_size));
    lineage
        .extra
        .insert("num_parameters".into(), json!(cfg.num_parameters()));
    let lineage_json: serde_json::Value = serde_json::from_str(&lineage.to_json())?;
    write_json(out.path(), LINEAGE_FILE, &lineage_json)?;
    let dir = out.commit()?;
    info!(out = %dir.display(), tokenizer = %tokenizer_hash, "model folder written");
    Ok(())
}

fn write_json(dir: &std::path::Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
