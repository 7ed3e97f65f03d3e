//! prep-data renders and tokenizes prompts as transformers' `apply_chat_template(messages,
//! add_generation_prompt=True, tokenize=True)` does, for tokenizer families and templates
//! that scripts/chat_golden.py builds with transformers (its cases.json holds the reference
//! text and ids): byte-level BPE with and without BOS, SentencePiece-style with byte fallback
//! whose post-processor adds BOS, templates that write BOS themselves (no second one) and
//! templates that do not (no BOS at all, as transformers). Without the project's Python the
//! test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::jsonl;
use rlhf_core::parquet_io::read_records;
use rlhf_core::records::PromptRow;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's Python: `RLHF_PYTHON`, else what scripts/setup-python.sh prints.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RLHF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = repo_root().join("scripts/setup-python.sh");
    let out = Command::new("bash").arg(&script).output().unwrap_or_else(|e| {
        panic!("prep-data chat_golden needs the Python reference (transformers): cannot run {}: {e}; set RLHF_PYTHON", script.display())
    });
    assert!(
        out.status.success(),
        "prep-data chat_golden needs the Python reference (transformers): {} failed; set RLHF_PYTHON",
        script.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}

#[test]
fn prompt_tokens_equal_apply_chat_template() {
    let t = tempfile::tempdir().unwrap();
    let gold_dir = t.path().join("gold");
    let out = Command::new(python())
        .arg(repo_root().join("scripts/chat_golden.py"))
        .arg("--out")
        .arg(&gold_dir)
        .output()
        .expect("running scripts/chat_golden.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gold: Value =
        serde_json::from_str(&std::fs::read_to_string(gold_dir.join("cases.json")).unwrap())
            .unwrap();
    let time = gold["time"].as_i64().unwrap().to_string();
    let mut compared = 0;
    for folder in [
        "bpe_bos__llama3",
        "spm_bos__mistral",
        "spm_bos__zephyr",
        "bpe_nobos__qwen25",
        "spm_bos__gemma2",
        "bpe_bos__smollm2",
    ] {
        // Conversations transformers renders without extra variables, as prompts.
        let cases: Vec<&Value> = gold["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["folder"] == folder
                    && c["add_generation_prompt"] == true
                    && c.get("error").is_none()
                    && c["vars"].as_object().unwrap().is_empty()
                    && ["single", "clean", "clean_system"]
                        .contains(&c["conversation"].as_str().unwrap())
            })
            .collect();
        assert!(cases.len() >= 2, "{folder}: too few cases");
        let input = t.path().join(format!("{folder}.jsonl"));
        let rows: Vec<Value> = cases
            .iter()
            .map(|c| json!({"prompt": c["messages"], "chosen": "yes", "rejected": "no"}))
            .collect();
        jsonl(&input, &rows);
        let out_dir = t.path().join(format!("out_{folder}"));
        // SOURCE_DATE_EPOCH: `strftime_now` reads the time the reference used.
        let run = Command::new(env!("CARGO_BIN_EXE_prep-data"))
            .args(["convert", "--input"])
            .arg(&input)
            .arg("--out-dir")
            .arg(&out_dir)
            .arg("--tokenizer")
            .arg(gold_dir.join(folder))
            .args(["--eval-fraction", "0", "--strict"])
            .env("SOURCE_DATE_EPOCH", &time)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{folder}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let prompts = read_records::<PromptRow>(&out_dir.join("prompts.parquet"))
            .unwrap()
            .0;
        assert_eq!(prompts.len(), cases.len(), "{folder}");
        for case in &cases {
            let want_text = case["text"].as_str().unwrap();
            let row = prompts
                .iter()
                .find(|p| p.prompt == want_text)
                .unwrap_or_else(|| {
                    panic!(
                        "{folder} / {}: no prompt equals transformers' {want_text:?}; ours: {:?}",
                        case["conversation"],
                        prompts.iter().map(|p| &p.prompt).collect::<Vec<_>>()
                    )
                });
            let want: Vec<i32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap() as i32)
                .collect();
            assert_eq!(
                row.prompt_tokens.as_deref(),
                Some(want.as_slice()),
                "{folder} / {}: prompt tokens differ from apply_chat_template",
                case["conversation"]
            );
            compared += 1;
        }
    }
    assert!(compared >= 14, "only {compared} prompts compared");
}
