//! Shared helpers of the train-sft tests: a generated sft file, a tiny model made by
//! init-model on it, running the binary, reading metrics, finding the Python reference env.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::SftRow;
use rlhf_core::schema::Artifact;

/// A deterministic, learnable sft set: counting and repeating tasks; every 8th row is eval.
pub fn rows(n: usize) -> Vec<SftRow> {
    (0..n)
        .map(|i| {
            let a = i % 23;
            let (prompt, completion) = if i % 2 == 0 {
                (
                    format!("User: count up from {a}.\nAssistant:"),
                    format!(" {} {} {} {}", a, a + 1, a + 2, a + 3),
                )
            } else {
                let w = ["red", "blue", "green", "gold"][i % 4];
                (
                    format!("User: say {w} twice.\nAssistant:"),
                    format!(" {w} {w}"),
                )
            };
            row(i, prompt, completion)
        })
        .collect()
}

/// One row with split by index.
pub fn row(i: usize, prompt: String, completion: String) -> SftRow {
    SftRow {
        sft_id: format!("s{i}"),
        prompt_id: format!("p{i}"),
        prompt,
        completion,
        messages: None,
        split: if i % 8 == 7 { "eval" } else { "train" }.into(),
        source: "test".into(),
        prompt_tokens: None,
        completion_tokens: None,
    }
}

/// Writes rows as an sft file, with an optional tokenizer hash in the lineage.
pub fn write_sft(path: &Path, rows: &[SftRow], tokenizer: Option<&str>) {
    let lineage =
        Lineage::new("test", "0", Artifact::Sft).with_tokenizer(tokenizer.map(String::from));
    write_records(path, rows, &lineage).unwrap();
}

/// A tiny Llama (hidden 32, 2 layers) with a tokenizer trained on `data`.
pub fn tiny_model(data: &Path, out: &Path, arch: &str) {
    let cli = init_model::Cli::try_parse_from([
        "init-model",
        "--text-file",
        data.to_str().unwrap(),
        "--text-column",
        "prompt,completion",
        "--vocab-size",
        "320",
        "--arch",
        arch,
        "--hidden-size",
        "32",
        "--num-heads",
        "4",
        "--max-position",
        "128",
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap();
    init_model::run(&init_model::Settings::from_cli(&cli).unwrap()).unwrap();
}

/// A temporary folder with `data.parquet` (rows(200)) and `model/`.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub model: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_rows(&rows(200), "llama")
    }

    pub fn with_rows(rows: &[SftRow], arch: &str) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data.parquet");
        write_sft(&data, rows, None);
        let model = root.path().join("model");
        tiny_model(&data, &model, arch);
        Fixture { root, data, model }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Runs train-sft on this fixture's model and data, writing `out`.
    pub fn sft(&self, out: &str, extra: &[&str]) -> Output {
        train_sft(&self.model, &self.data, &self.path(out), extra)
    }
}

/// Runs the train-sft binary (one compute thread, quiet progress).
pub fn train_sft(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train-sft"))
        .args(["--model", model.to_str().unwrap()])
        .args(["--data", data.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(["--threads", "1", "--device", "cpu", "--no-progress"])
        .args(extra)
        .output()
        .unwrap()
}

/// Panics with stderr unless the run succeeded.
#[allow(unused_imports)] // not every test binary uses it
pub use rlhf_testkit::assert_success as ok;

/// Values of one metric, in step order.
pub fn metric(dir: &Path, name: &str) -> Vec<(i64, f64)> {
    let log = MetricsLog::read(&dir.join("metrics.parquet"), "train-sft", 0).unwrap();
    log.rows
        .iter()
        .filter(|r| r.metric == name)
        .map(|r| (r.step, r.value))
        .collect()
}
