//! init-model end to end: the folder it writes loads in transformers (model and tokenizer
//! agree with ours), loads in our own loader, and is byte-identical on a rerun.

use std::path::Path;
use std::process::Command;

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::SftRow;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_testkit::python;

fn write_corpus(path: &Path) {
    let rows: Vec<SftRow> = (0..400)
        .map(|i| SftRow {
            sft_id: format!("s{i}"),
            prompt_id: format!("p{i}"),
            prompt: format!("User: what is {} plus {}?\nAssistant:", i % 37, i % 11),
            completion: format!(" {} plus {} is {}.", i % 37, i % 11, i % 37 + i % 11),
            messages: None,
            split: "train".into(),
            source: "test".into(),
            prompt_tokens: None,
            completion_tokens: None,
        })
        .collect();
    write_records(path, &rows, &Lineage::new("test", "0", Artifact::Sft)).unwrap();
}

fn init(corpus: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_init-model"))
        .args([
            "--text-file",
            corpus.to_str().unwrap(),
            "--text-column",
            "prompt,completion",
        ])
        .args(["--out", out.to_str().unwrap(), "--vocab-size", "320"])
        .args(extra)
        .output()
        .unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rerun_gives_a_byte_identical_folder() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.parquet");
    write_corpus(&corpus);
    let out = root.path().join("model");
    let first = init(&corpus, &out, &["--seed", "5"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let a = files(&out);
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    for needed in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    let second = init(&corpus, &out, &["--seed", "5"]);
    assert!(second.status.success());
    assert_eq!(a, files(&out), "second run differs");
    // Only the folder itself is left beside the corpus (no temporaries).
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
    // A different seed changes the weights but not the tokenizer.
    let other = root.path().join("other");
    assert!(init(&corpus, &other, &["--seed", "6"]).status.success());
    let b = files(&other);
    let get = |v: &[(String, Vec<u8>)], n: &str| v.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get(&a, "tokenizer.json"), get(&b, "tokenizer.json"));
    assert_ne!(get(&a, "model.safetensors"), get(&b, "model.safetensors"));
}

#[test]
fn bad_column_is_exit_3_naming_the_columns() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.parquet");
    write_corpus(&corpus);
    let out = Command::new(env!("CARGO_BIN_EXE_init-model"))
        .args([
            "--text-file",
            corpus.to_str().unwrap(),
            "--text-column",
            "text",
        ])
        .args(["--out", root.path().join("m").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no column `text`") && err.contains("completion (Utf8)"),
        "{err}"
    );
    assert!(!root.path().join("m").exists());
}

/// Our logits for `ids` (one row), from our loader.
fn our_logits(dir: &Path, ids: &[i32]) -> Vec<f32> {
    let model = rlhf_nn::Model::load(dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let input = tch::Tensor::from_slice(ids)
        .to_kind(tch::Kind::Int64)
        .view([1, -1]);
    let mask = input.ones_like();
    let _g = tch::no_grad_guard();
    let hidden = model.forward(&input, &mask, None, false).unwrap();
    let logits = model.lm_logits(&hidden, None, false).unwrap().view([-1]);
    Vec::<f32>::try_from(&logits).unwrap()
}

fn check_in_transformers(arch: &str) {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.parquet");
    write_corpus(&corpus);
    let out = root.path().join("model");
    let run = init(
        &corpus,
        &out,
        &["--arch", arch, "--hidden-size", "32", "--num-heads", "4"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tok = Tokenizer::from_dir(&out).unwrap();
    let text = "User: what is 12 plus 7?\nAssistant: 12 plus 7 is 19.";
    let ids = tok.encode(text, true).unwrap();
    let logits = our_logits(&out, &ids);
    let chat = tok
        .chat()
        .unwrap()
        .render(&[rlhf_core::records::Message::new("user", "hi")], true)
        .unwrap();
    let expected = serde_json::json!({"text": text, "ids": ids, "logits": logits, "chat": chat});
    let expected_path = root.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, exp = sys.argv[1], json.load(open(sys.argv[2]))
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
ids = tok(exp["text"])["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([exp["ids"]])).logits.reshape(-1)
diff = (logits - torch.tensor(exp["logits"])).abs().max().item()
chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"ids": ids, "max_diff": diff, "chat": chat, "decoded": tok.decode(ids, skip_special_tokens=True),
                  "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}))
"#;
    let py = Command::new(python())
        .args([
            "-c",
            script,
            out.to_str().unwrap(),
            expected_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(
        py.stdout
            .rsplit(|&b| b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got["ids"], serde_json::json!(ids), "tokenizer ids differ");
    assert_eq!(got["decoded"], serde_json::json!(text));
    assert_eq!(got["chat"], serde_json::json!(chat));
    assert_eq!(
        (
            got["bos"].as_i64(),
            got["eos"].as_i64(),
            got["pad"].as_i64()
        ),
        (Some(0), Some(1), Some(2))
    );
    let diff = got["max_diff"].as_f64().unwrap();
    assert!(diff < 1e-4, "logits differ from transformers by {diff}");
}

#[test]
fn llama_folder_loads_in_transformers_with_the_same_tokens_and_logits() {
    check_in_transformers("llama");
}

#[test]
fn gpt2_folder_loads_in_transformers_with_the_same_tokens_and_logits() {
    check_in_transformers("gpt2");
}
