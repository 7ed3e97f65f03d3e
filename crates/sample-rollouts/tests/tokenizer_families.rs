//! sample-rollouts against transformers, for every tokenizer family of scripts/chat_golden.py:
//! byte-level BPE whose post-processor adds BOS (Llama-3 style, with a template that writes
//! BOS too), byte-level BPE without BOS (Qwen2 style), and SentencePiece-style BPE with a
//! Metaspace pre-tokenizer, byte fallback and `<s>` from the post-processor (Llama-2 /
//! Mistral style, once with a template that writes BOS and once with one that does not).
//!
//! tokenizer_families.py (beside this file, run with the project's Python: `RLHF_PYTHON`,
//! else what scripts/setup-python.sh makes) saves a tiny random Llama with transformers beside
//! each tokenizer and records apply_chat_template's prompt ids, greedy `generate`'s new tokens
//! and their decoded text, and `generate(stop_strings=...)`'s tokens. Here prep-data turns the
//! same conversations into prompts.parquet and sample-rollouts samples greedily from it; every
//! prompt id, response id, response text and finish reason must be transformers'. In the
//! forced case the model spells " Naïve 😀 blue" then EOS, so the response holds characters
//! that byte fallback splits into byte tokens, and a stop string (the emoji) that only its
//! fourth byte token completes. In the Llama-3 style case the model's eos_token_id lists a
//! second end token besides the tokenizer's EOS (as Llama-3.1 and Qwen2.5 instruct models
//! do): transformers stops at either, and so must sample-rollouts (it used to stop only at the
//! tokenizer's). Without the project's Python the tests fail and say so.
//!
//! The contract checked (sample-rollouts' --help and src/sampler.rs): response_tokens are the
//! generated ids, the EOS included when it ended the response; `response` is their text with
//! special tokens removed (`decode(ids, skip_special_tokens=True)`, so the EOS is not in the
//! text); a stop string ends the response at the token that completes it, that token kept and
//! the text not trimmed (the stop string stays in `response`), as transformers' stop_strings
//! keeps the tokens. Differences by design: transformers also matches a stop string that
//! starts in the prompt and reads special tokens as their text, we look at the response's
//! decoded text only (the chosen strings lie inside it, between plain tokens).
//! prep-data is found beside this test's binary (target/<profile>/):
//! `make test` builds every binary; alone, run `scripts/cargo.sh build --release -p prep-data`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_records, write_records};
use rlhf_core::records::{PromptRow, RolloutRow};
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// The reference cases and, per case, prep-data's prompts.parquet.
struct Fixture {
    dir: tempfile::TempDir,
    gold: Value,
}

impl Fixture {
    fn cases(&self) -> &[Value] {
        self.gold["cases"].as_array().unwrap()
    }

    fn model(&self, case: &Value) -> PathBuf {
        self.dir.path().join("ref").join(name(case))
    }

    fn prompts(&self, case: &Value) -> PathBuf {
        self.dir
            .path()
            .join(format!("prep_{}", name(case)))
            .join("prompts.parquet")
    }
}

fn name(case: &Value) -> &str {
    case["name"].as_str().unwrap()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_i64().unwrap() as i32)
        .collect()
}

/// A stage binary built beside this test (target/<profile>/<name>).
fn stage_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it first (make build, or scripts/cargo.sh build --release -p {name})",
        bin.display()
    );
    bin
}

/// Runs the Python reference once and prep-data once per case (shared by the tests).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tokenizer_families.py");
        let py = rlhf_testkit::python();
        let out = Command::new(&py)
            .arg(&script)
            .arg("--out")
            .arg(dir.path().join("ref"))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "tokenizer_families needs the Python reference (transformers): cannot run \
                     {}: {e}; set RLHF_PYTHON to the project's Python",
                    py.display()
                )
            });
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("ref/cases.json")).unwrap();
        let fx = Fixture {
            gold: serde_json::from_str(&text).unwrap(),
            dir,
        };
        // SOURCE_DATE_EPOCH: `strftime_now` (Llama-3's template) reads the reference's time.
        let time = fx.gold["time"].as_i64().unwrap().to_string();
        for case in fx.cases() {
            let input = fx.dir.path().join(format!("{}.jsonl", name(case)));
            let lines: String = case["runs"][0]["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    json!({"prompt": r["messages"], "chosen": "yes", "rejected": "no"}).to_string()
                        + "\n"
                })
                .collect();
            std::fs::write(&input, lines).unwrap();
            let prompts = fx.prompts(case);
            let run = Command::new(stage_binary("prep-data"))
                .args(["convert", "--input"])
                .arg(&input)
                .arg("--out-dir")
                .arg(prompts.parent().unwrap())
                .arg("--tokenizer")
                .arg(fx.model(case))
                .args(["--eval-fraction", "0", "--strict"])
                .env("SOURCE_DATE_EPOCH", &time)
                .output()
                .unwrap();
            rlhf_testkit::assert_success(&run);
        }
        fx
    })
}

/// Samples greedily (one sample per prompt) from `prompts` with the case's model; returns the
/// rollouts.
fn sample(
    fx: &Fixture,
    case: &Value,
    prompts: &Path,
    stop: &[Value],
    tag: &str,
) -> Vec<RolloutRow> {
    let out = fx.dir.path().join(format!("{}_{tag}.parquet", name(case)));
    let max_new = case["max_new_tokens"].as_i64().unwrap().to_string();
    let mut args: Vec<String> = [
        "--model",
        fx.model(case).to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--samples-per-prompt",
        "1",
        "--temperature",
        "0",
        "--max-new-tokens",
        &max_new,
    ]
    .map(String::from)
    .to_vec();
    for s in stop {
        args.push(format!("--stop={}", s.as_str().unwrap()));
    }
    args.extend(["--device", "cpu", "--no-progress", "--threads", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sample-rollouts"));
    let (code, _, stderr) = rlhf_testkit::run(&bin, &args);
    assert_eq!(code, 0, "{}: sample-rollouts failed:\n{stderr}", name(case));
    read_records::<RolloutRow>(&out).unwrap().0
}

/// The rollout of the reference row's prompt (matched by prompt text).
fn rollout_of<'a>(rows: &'a [RolloutRow], reference: &Value, label: &str) -> &'a RolloutRow {
    let text = reference["prompt"].as_str().unwrap();
    rows.iter().find(|r| r.prompt == text).unwrap_or_else(|| {
        panic!(
            "{label}: no rollout has transformers' prompt {text:?}; ours: {:?}",
            rows.iter().map(|r| &r.prompt).collect::<Vec<_>>()
        )
    })
}

/// BOS tokens among `ids`.
fn bos_count(case: &Value, ids: &[i32]) -> usize {
    match case["bos_id"].as_i64() {
        Some(b) => ids.iter().filter(|&&i| i as i64 == b).count(),
        None => 0,
    }
}

#[test]
fn prompt_tokens_are_apply_chat_template_with_at_most_one_bos() {
    let fx = fixture();
    for case in fx.cases() {
        let rows = sample(fx, case, &fx.prompts(case), &[], "plain");
        for reference in case["runs"][0]["rows"].as_array().unwrap() {
            let label = format!("{} / {}", name(case), reference["messages"]);
            let r = rollout_of(&rows, reference, &label);
            let want = ids(&reference["prompt_ids"]);
            assert_eq!(
                r.prompt_tokens, want,
                "{label}: prompt tokens differ from apply_chat_template"
            );
            // Templates that write BOS (llama3, mistral) on tokenizers whose post-processor
            // adds one too: one BOS, at the start. zephyr writes none: none, as transformers.
            let expected_bos = match case["template"].as_str().unwrap() {
                "llama3" | "mistral" => 1,
                _ => 0,
            };
            assert_eq!(
                bos_count(case, &r.prompt_tokens),
                expected_bos,
                "{label}: BOS count in {:?}",
                r.prompt_tokens
            );
            if expected_bos == 1 {
                assert_eq!(r.prompt_tokens[0] as i64, case["bos_id"].as_i64().unwrap());
            }
        }
    }
}

#[test]
fn greedy_responses_are_transformers_generate_and_decode() {
    let fx = fixture();
    let mut special_in_response = 0;
    let mut other_eos = 0;
    for case in fx.cases() {
        let rows = sample(fx, case, &fx.prompts(case), &[], "greedy");
        let refs = case["runs"][0]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), refs.len(), "{}", name(case));
        for reference in refs {
            let label = format!("{} / {}", name(case), reference["messages"]);
            let r = rollout_of(&rows, reference, &label);
            assert_eq!(
                r.response_tokens,
                ids(&reference["response_ids"]),
                "{label}: greedy tokens differ from transformers' generate (smallest top-2 \
                 logit gap there: {})",
                reference["margin"]
            );
            assert_eq!(
                r.response,
                reference["response"].as_str().unwrap(),
                "{label}: response text differs from decode(skip_special_tokens=True)"
            );
            assert_eq!(
                r.finish_reason,
                reference["finish"].as_str().unwrap(),
                "{label}"
            );
            if reference["response_all"] != reference["response"] {
                special_in_response += 1;
            }
            let last = r.response_tokens.last().map(|&t| t as i64);
            if r.finish_reason == "eos" && last != case["eos_id"].as_i64() {
                other_eos += 1;
            }
        }
        if !case["forced"].is_null() {
            // Byte fallback: "ï" is two byte tokens, "😀" four; the text is whole, the
            // Metaspace space of the first token stripped, the EOS not in it.
            for r in &rows {
                assert_eq!(r.response, case["forced"].as_str().unwrap().trim_start());
                assert_eq!(r.finish_reason, "eos");
                assert_eq!(
                    *r.response_tokens.last().unwrap() as i64,
                    case["eos_id"].as_i64().unwrap()
                );
            }
        }
    }
    // So that decoding with special tokens kept would fail above.
    assert!(
        special_in_response >= 2,
        "only {special_in_response} responses hold a special token"
    );
    // So that stopping at the tokenizer's EOS only would fail above.
    assert!(
        other_eos >= 1,
        "no response ended at an eos_token_id other than the tokenizer's EOS"
    );
}

#[test]
fn stop_strings_end_responses_where_transformers_stops() {
    let fx = fixture();
    let mut stopped = 0;
    for case in fx.cases() {
        let run = &case["runs"][1];
        let stops: Vec<&str> = run["stop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(!stops.is_empty(), "{}", name(case));
        let rows = sample(
            fx,
            case,
            &fx.prompts(case),
            run["stop"].as_array().unwrap(),
            "stop",
        );
        let tokenizer = Tokenizer::from_dir(&fx.model(case)).unwrap();
        for (reference, unstopped) in run["rows"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["runs"][0]["rows"].as_array().unwrap())
        {
            let label = format!(
                "{} / {} / stop {stops:?}",
                name(case),
                reference["messages"]
            );
            let r = rollout_of(&rows, reference, &label);
            // The tokens transformers' stop_strings keeps: up to and with the token that
            // completes a stop string.
            assert_eq!(
                r.response_tokens,
                ids(&reference["response_ids"]),
                "{label}: tokens differ from generate(stop_strings=...)"
            );
            assert_eq!(
                r.response,
                reference["response"].as_str().unwrap(),
                "{label}"
            );
            assert_eq!(
                r.finish_reason,
                reference["finish"].as_str().unwrap(),
                "{label}"
            );
            assert!(ids(&unstopped["response_ids"]).starts_with(&r.response_tokens));
            if r.finish_reason != "stop" {
                continue;
            }
            stopped += 1;
            // Our contract: the text is not trimmed (the stop string stays in it), and the
            // last token is the one that completes it (one token earlier there is none).
            assert!(
                stops.iter().any(|s| r.response.contains(s)),
                "{label}: {:?}",
                r.response
            );
            let before = tokenizer
                .decode(&r.response_tokens[..r.response_tokens.len() - 1])
                .unwrap();
            assert!(
                !stops.iter().any(|s| before.contains(s)),
                "{label}: {before:?} already holds a stop string"
            );
        }
    }
    assert!(
        stopped >= 4,
        "only {stopped} responses ended at a stop string"
    );
}

#[test]
fn prompts_without_tokens_are_encoded_with_at_most_one_bos() {
    // A prompts file without prompt_tokens (or from another tokenizer): sample-rollouts
    // encodes the prompt text, adding BOS when the tokenizer adds one and the text does not
    // start with it. A template that writes BOS then gets apply_chat_template's ids, not the
    // two BOS of transformers' `tok(text)`; one that does not gets `tok(text)`'s one BOS.
    let fx = fixture();
    for case in fx.cases() {
        let (mut rows, _) = read_records::<PromptRow>(&fx.prompts(case)).unwrap();
        for row in &mut rows {
            row.prompt_tokens = None;
        }
        let path = fx
            .dir
            .path()
            .join(format!("{}_prompts_untokenized.parquet", name(case)));
        write_records(&path, &rows, &Lineage::new("test", "0", Artifact::Prompts)).unwrap();
        let out = sample(fx, case, &path, &[], "untokenized");
        for reference in case["runs"][0]["rows"].as_array().unwrap() {
            let label = format!("{} / {}", name(case), reference["messages"]);
            let r = rollout_of(&out, reference, &label);
            let want = match case["template"].as_str().unwrap() {
                "llama3" | "mistral" => {
                    // what transformers warns about: the template's BOS and the tokenizer's
                    assert_eq!(bos_count(case, &ids(&reference["text_ids"])), 2, "{label}");
                    ids(&reference["prompt_ids"])
                }
                _ => ids(&reference["text_ids"]),
            };
            assert_eq!(r.prompt_tokens, want, "{label}");
            assert!(bos_count(case, &r.prompt_tokens) <= 1, "{label}");
            if r.prompt_tokens == ids(&reference["prompt_ids"]) {
                assert_eq!(
                    r.response_tokens,
                    ids(&reference["response_ids"]),
                    "{label}: the same prompt ids must give the same greedy tokens"
                );
            }
        }
    }
}
