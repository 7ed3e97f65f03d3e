//! Golden tests of chat templates and tokenizer families against transformers.
//!
//! scripts/chat_golden.py (run here with the project's Python: `RLHF_PYTHON`, else the
//! environment scripts/setup-python.sh makes) builds byte-level BPE and SentencePiece-style
//! tokenizers, saves each with every template of tests/fixtures/chat_templates/ (written in
//! the style of Llama-3.1, Qwen2.5, Mistral v0.3, Zephyr, Gemma-2, Phi-3 and SmolLM2), and
//! records what `apply_chat_template` renders and tokenizes for a set of conversations, with
//! and without a generation prompt; plus plain encodes and decodes per tokenizer, and probes
//! of single Jinja2 features. Here the same folders are loaded with `Tokenizer::from_dir` and
//! every case must give the same text and the same ids, or fail where transformers fails,
//! with the template's message or the unsupported name. Without Python the test fails and
//! says so: it never passes without comparing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rlhf_core::chat::ChatTemplate;
use rlhf_core::tokenizer::Tokenizer;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's Python: `RLHF_PYTHON`, else what scripts/setup-python.sh prints.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RLHF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = repo_root().join("scripts/setup-python.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "chat_golden needs the Python reference (transformers): cannot run {}: {e}; \
             set RLHF_PYTHON to the project's Python",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "chat_golden needs the Python reference (transformers): {} failed: {}; set RLHF_PYTHON",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}

/// Runs scripts/chat_golden.py into a temporary folder; returns it and cases.json.
fn golden() -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let py = python();
    let script = repo_root().join("scripts/chat_golden.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "chat_golden needs the Python reference: cannot run {}: {e}",
                py.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("cases.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_i64().unwrap() as i32)
        .collect()
}

fn obj(v: &Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// What the reference's error must show on our side: a `TemplateError` (raise_exception)
/// its message; other errors only that we fail too (their wording is Jinja2's).
fn expected_fragment(error: &str) -> Option<&str> {
    error.strip_prefix("TemplateError: ")
}

#[test]
fn templates_and_tokenizers_match_transformers() {
    let (dir, gold) = golden();
    let time = gold["time"].as_i64().unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut tokenizers: HashMap<String, Tokenizer> = HashMap::new();
    let (mut rendered, mut refused) = (0, 0);
    let cases = gold["cases"].as_array().unwrap();
    for case in cases {
        let folder = case["folder"].as_str().unwrap();
        let tok = tokenizers
            .entry(folder.to_string())
            .or_insert_with(|| Tokenizer::from_dir(&dir.path().join(folder)).unwrap());
        let label = format!(
            "{folder} / {} / add_generation_prompt={}",
            case["conversation"].as_str().unwrap(),
            case["add_generation_prompt"]
        );
        let mut chat = tok.chat().unwrap();
        chat.set_time(time);
        let messages = case["messages"].as_array().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let ours = chat.render_with(messages, agp, &obj(&case["vars"]));
        match (&ours, case.get("error").and_then(|e| e.as_str())) {
            (Err(e), Some(want)) => {
                refused += 1;
                if let Some(frag) = expected_fragment(want) {
                    if !e.to_string().contains(frag) {
                        failures.push(format!("{label}: error `{e}` lacks `{frag}`"));
                    }
                }
            }
            (Ok(text), Some(want)) => failures.push(format!(
                "{label}: transformers fails ({want}), we render {text:?}"
            )),
            (Err(e), None) => failures.push(format!("{label}: we fail: {e}")),
            (Ok(text), None) => {
                rendered += 1;
                let want = case["text"].as_str().unwrap();
                if text != want {
                    failures.push(format!(
                        "{label}: text\n  ours:   {text:?}\n  theirs: {want:?}"
                    ));
                    continue;
                }
                let want_ids = ids(&case["ids"]);
                let got = tok.encode_rendered(text).unwrap();
                if got != want_ids {
                    failures.push(format!(
                        "{label}: ids\n  ours:   {got:?}\n  theirs: {want_ids:?}"
                    ));
                }
                // A prompt encoded as text with BOS (sample-rollouts without stored tokens)
                // gets no second BOS when the template wrote one.
                let bos = tok.bos.as_ref().map(|b| b.1 as i32);
                if bos.is_some() && want_ids.first().copied() == bos {
                    let again = tok.encode(text, true).unwrap();
                    if again != want_ids {
                        failures.push(format!("{label}: encode(text, add_bos) gives {again:?}"));
                    }
                }
            }
        }
    }
    let mut texts = 0;
    for (family, samples) in gold["texts"].as_object().unwrap() {
        let tok = Tokenizer::from_dir(&dir.path().join(format!("{family}__llama3"))).unwrap();
        for s in samples.as_array().unwrap() {
            texts += 1;
            let text = s["text"].as_str().unwrap();
            let plain = tok.encode(text, false).unwrap();
            let special = tok.encode(text, true).unwrap();
            let decoded = tok.decode(&plain).unwrap();
            let label = format!("{family} / {text:?}");
            if plain != ids(&s["ids_plain"]) {
                failures.push(format!(
                    "{label}: ids {plain:?}, transformers {}",
                    s["ids_plain"]
                ));
            }
            if special != ids(&s["ids_special"]) {
                failures.push(format!(
                    "{label}: ids with special tokens {special:?}, transformers {}",
                    s["ids_special"]
                ));
            }
            if decoded != s["decoded"].as_str().unwrap() {
                failures.push(format!(
                    "{label}: decoded {decoded:?}, transformers {}",
                    s["decoded"]
                ));
            }
        }
    }
    let probe_tok = Tokenizer::from_dir(&dir.path().join("bpe_bos__llama3")).unwrap();
    let probe_messages = gold["messages"].as_array().unwrap();
    let mut probes = 0;
    for p in gold["probes"].as_array().unwrap() {
        probes += 1;
        let src = p["template"].as_str().unwrap();
        let label = format!("probe {src:?}");
        let ours = ChatTemplate::with_special_tokens(
            src,
            Path::new("probe.jinja"),
            probe_tok.special_tokens().clone(),
        )
        .and_then(|mut t| {
            t.set_time(time);
            t.render_with(probe_messages, false, &obj(&p["vars"]))
        });
        match (&ours, p.get("error").and_then(|e| e.as_str())) {
            (Ok(text), None) if text == p["text"].as_str().unwrap() => {}
            (Ok(text), None) => failures.push(format!(
                "{label}:\n  ours:   {text:?}\n  theirs: {:?}",
                p["text"].as_str().unwrap()
            )),
            (Err(e), None) => failures.push(format!("{label}: we fail: {e}")),
            (Ok(text), Some(want)) => failures.push(format!(
                "{label}: transformers fails ({want}), we render {text:?}"
            )),
            (Err(e), Some(_)) => {
                let msg = e.to_string();
                for name in p["names"].as_array().unwrap() {
                    let name = name.as_str().unwrap();
                    if !msg.contains(name) {
                        failures.push(format!("{label}: error `{msg}` does not name `{name}`"));
                    }
                }
            }
        }
    }
    eprintln!(
        "chat_golden: {} template cases ({rendered} rendered, {refused} refused by the template), \
         {texts} texts, {probes} probes",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} differences from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rendered > 250 && refused > 50, "too few cases compared");
}
