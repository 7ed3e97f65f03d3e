//! Off-the-shelf reward models with `--retokenize`: *ForSequenceClassification folders
//! written by transformers (Qwen2 with a byte-level BPE tokenizer and a ChatML template,
//! Llama with a BOS-adding tokenizer and a template that writes BOS itself, GPT-2 with the
//! ChatML template on a tokenizer without BOS, Llama on a SentencePiece-style tokenizer with
//! byte fallback and a template that writes BOS), none with the policy's tokenizer, score
//! rollouts whose prompts came as chat messages exactly as transformers scores
//! `apply_chat_template(messages + [assistant], tokenize=True)`. Rollouts without messages,
//! and reward models without a chat template, fall back to the prompt text; the summary and
//! lineage record which way each column went; a template that refuses a conversation is an
//! error naming the reward model and the rollout.

mod common;

use std::path::{Path, PathBuf};

use rlhf_core::chat::ChatTemplate;
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_lineage, write_records};
use rlhf_core::records::{Message, RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;

use common::{rollouts, run, tiny_model};

const QWEN_TEMPLATE: &str = include_str!("../../../tests/fixtures/chat_templates/qwen25.jinja");
const LLAMA_TEMPLATE: &str = include_str!("../../../tests/fixtures/chat_templates/gemma2.jinja");
const MISTRAL_TEMPLATE: &str = include_str!("../../../tests/fixtures/chat_templates/mistral.jinja");

/// Builds the two reward model folders with transformers (tokenizers trained here with the
/// `tokenizers` library, random weights with random biases) and prints each one's score of
/// every conversation, one sequence per call: Qwen2's scores, then Llama's, GPT-2's and the
/// SentencePiece-style Llama's.
const TRANSFORMERS_SCRIPT: &str = r#"
import json, os, sys, torch
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, GPT2Config,
    GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification,
    PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification)
torch.set_num_threads(1)
a = json.load(open(sys.argv[1]))
CORPUS = ["Hello there! What's 12 + 7? It is 19, of course.",
          "You are a helpful assistant. Answer briefly and politely.",
          "The weather in Paris is sunny; the temperature is 21 degrees.",
          "Name three colours: red, green and blue. Thanks a lot!"] * 20
CONTROL = ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]

def byte_level(bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [bos, "<|endoftext|>"] if bos else ["<|endoftext|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL])
    return tok

def build(name, cls, cfg_cls, bos, special, template, seed):
    out = os.path.join(a["root"], name)
    fast = PreTrainedTokenizerFast(tokenizer_object=byte_level(bos), **special)
    fast.chat_template = template
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    ids = dict(pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, num_labels=1, initializer_range=0.2)
    if cfg_cls is GPT2Config:
        cfg = GPT2Config(vocab_size=len(fast), n_embd=64, n_layer=2, n_head=4, n_positions=512,
            **ids)
    else:
        cfg = cfg_cls(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, **ids)
    model = cls(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    # saved again as transformers loads it for this model type (transformers 5 gives a Qwen2
    # tokenizer Qwen2's own pre-tokenizer and normalizer), so tokenizer.json is what it runs
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return out

def build_spm(name, template, seed):
    """SentencePiece-style tokenizer (Metaspace, byte fallback, <s> by the post-processor and
    add_bos_token) from scripts/chat_golden.py, a template that writes BOS itself."""
    sys.path.insert(0, a["scripts"])
    import chat_golden
    out = os.path.join(a["root"], name)
    tok, toks, extra = chat_golden.families()["spm_bos"]
    chat_golden.save(tok, toks, extra, out, template)
    fast = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, num_labels=1, initializer_range=0.2,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    LlamaForSequenceClassification(cfg).eval().save_pretrained(out)
    fast.save_pretrained(out)
    return out

folders = [
    build("qwen", Qwen2ForSequenceClassification, Qwen2Config, None,
          dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), a["qwen_template"], 11),
    build("llama", LlamaForSequenceClassification, LlamaConfig, "<|begin_of_text|>",
          dict(bos_token="<|begin_of_text|>", eos_token="<end_of_turn>",
               pad_token="<|endoftext|>"), a["llama_template"], 12),
    build("gpt2", GPT2ForSequenceClassification, GPT2Config, None,
          dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), a["qwen_template"], 13),
    build_spm("spm", a["mistral_template"], 14),
]
scores = []
for folder in folders:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for messages, response in a["conversations"]:
            conversation = messages + [{"role": "assistant", "content": response}]
            ids = tok.apply_chat_template(conversation, tokenize=True, return_dict=False)
            scores.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
print(json.dumps(scores))
"#;

/// Prompts as chat messages (alternating roles, no system turn: both templates take them).
fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new("user", "Hello there! What's 12 + 7?")],
        vec![Message::new("user", "Name three colours.")],
        vec![
            Message::new("user", "Hi!"),
            Message::new("assistant", "Hello. How can I help?"),
            Message::new("user", "What is the weather in Paris?"),
        ],
        vec![Message::new(
            "user",
            "Answer briefly and politely: is 7 prime?",
        )],
    ]
}

const RESPONSES: [&str; 7] = [
    "It is 19, of course.",
    "Red, green and blue.",
    "Sunny; the temperature is 21 degrees.",
    "Yes, 7 is prime. Thanks a lot!",
    "I don't know",
    "19",
    "You are a helpful assistant.",
];

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rows: Vec<RolloutRow>,
    messages: Vec<Vec<Message>>,
    /// transformers' scores of every rollout: Qwen2's, then Llama's, GPT-2's, `spm`'s.
    theirs: Vec<f64>,
}

impl Fixture {
    /// The policy (a tiny Llama with a word tokenizer), its rollouts with each prompt as
    /// messages and as text rendered for the policy, and the reward model folders `qwen`,
    /// `llama` and `qwen-no-template` (qwen's folder without its chat template).
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        tiny_model(&root.join("policy"), 5);
        let policy_tokenizer = Tokenizer::from_dir(&root.join("policy")).unwrap();
        let convs = conversations();
        let mut rows = rollouts(convs.len(), 3);
        let mut messages = Vec::new();
        for (i, row) in rows.iter_mut().enumerate() {
            let m = convs[i / 3].clone();
            row.prompt = ChatTemplate::plain().render(&m, true).unwrap();
            row.response = RESPONSES[i % RESPONSES.len()].to_string();
            messages.push(m);
        }
        let pairs: Vec<serde_json::Value> = rows
            .iter()
            .zip(&messages)
            .map(|(r, m)| serde_json::json!([m, r.response]))
            .collect();
        let theirs = common::python_reference(
            &root,
            "hf",
            TRANSFORMERS_SCRIPT,
            serde_json::json!({
                "root": root.display().to_string(),
                "qwen_template": QWEN_TEMPLATE,
                "llama_template": LLAMA_TEMPLATE,
                "mistral_template": MISTRAL_TEMPLATE,
                "scripts": concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts"),
                "conversations": pairs,
            }),
        );
        assert_eq!(theirs.len(), 4 * rows.len());
        let f = Fixture {
            _dir: dir,
            root,
            rows,
            messages,
            theirs,
        };
        let all: Vec<Option<Vec<Message>>> = f.messages.iter().cloned().map(Some).collect();
        f.write_rollouts("messages.parquet", Some(&all), policy_tokenizer.hash());
        f.write_rollouts("text.parquet", None, policy_tokenizer.hash());
        // the last prompt's rollouts without messages
        let mut some = all.clone();
        for m in some.iter_mut().skip(9) {
            *m = None;
        }
        f.write_rollouts("mixed.parquet", Some(&some), policy_tokenizer.hash());
        f.without_chat_template("qwen", "qwen-no-template");
        f
    }

    fn p(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// Writes the rollouts to `name`, each row with its `messages` (all None without).
    fn write_rollouts(&self, name: &str, messages: Option<&[Option<Vec<Message>>]>, tok: &str) {
        let rows: Vec<RolloutRow> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| RolloutRow {
                messages: messages.and_then(|m| m[i].clone()),
                ..r.clone()
            })
            .collect();
        let lineage =
            Lineage::new("test", "0", Artifact::Rollouts).with_tokenizer(Some(tok.to_string()));
        write_records(&self.root.join(name), &rows, &lineage).unwrap();
    }

    /// Copies the folder `from` to `to` without its chat template.
    fn without_chat_template(&self, from: &str, to: &str) {
        let to = self.root.join(to);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(self.root.join(from)).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "chat_template.jinja" {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        let cfg_path = to.join("tokenizer_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg.as_object_mut().unwrap().remove("chat_template");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        assert!(Tokenizer::from_dir(&to).unwrap().chat_template.is_none());
    }

    /// Scores `rollouts` with `--retokenize` and the reward models `rms`; returns the scores,
    /// the summary's details and stderr.
    fn score(&self, rollouts: &str, rms: &[&str]) -> (ScoresTable, serde_json::Value, String) {
        let (r, o, s) = (
            self.p(rollouts),
            self.p(&format!("{rollouts}.scores.parquet")),
            self.p(&format!("{rollouts}.summary.json")),
        );
        let mut args = vec![
            "--rollouts",
            &r,
            "--out",
            &o,
            "--device",
            "cpu",
            "--retokenize",
            "--summary-json",
            &s,
        ];
        let dirs: Vec<String> = rms.iter().map(|d| self.p(d)).collect();
        for d in &dirs {
            args.extend(["--reward-model", d.as_str()]);
        }
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 0, "score-rewards failed: {stderr}");
        let table = ScoresTable::read(Path::new(&o)).unwrap().0;
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&s).unwrap()).unwrap();
        // the lineage records the same as the summary
        let lineage = read_lineage(Path::new(&o)).unwrap().unwrap();
        assert_eq!(
            lineage.extra.get("retokenized"),
            summary["details"].get("retokenized")
        );
        (table, summary["details"].clone(), stderr)
    }
}

fn column(t: &ScoresTable, name: &str) -> Vec<f64> {
    t.source(name)
        .unwrap_or_else(|| panic!("no column `{name}`"))
        .iter()
        .map(|v| v.unwrap() as f64)
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn conversations_are_rendered_with_each_reward_models_own_chat_template() {
    let f = Fixture::new();
    let n = f.rows.len();
    let (qwen_hf, rest) = f.theirs.split_at(n);
    let (llama_hf, rest) = rest.split_at(n);
    let (gpt2_hf, spm_hf) = rest.split_at(n);

    // GPT-2 (ChatML template on a byte-level tokenizer without BOS), and a Llama on a
    // SentencePiece-style tokenizer whose Mistral-style template writes BOS itself
    for (folder, theirs) in [("gpt2", gpt2_hf), ("spm", spm_hf)] {
        let (t, details, _) = f.score("messages.parquet", &[folder]);
        let ours = column(&t, "rm");
        let err = max_abs_diff(&ours, theirs);
        eprintln!("max |score-rewards - transformers| for {folder}: {err:.2e}");
        assert!(err < 1e-4, "{folder} {ours:?} vs transformers {theirs:?}");
        assert_eq!(
            details["retokenized"],
            serde_json::json!({"rm": "chat_template"})
        );
    }

    let (t, details, stderr) = f.score("messages.parquet", &["qwen", "llama"]);
    assert!(
        stderr.contains("rendering each prompt's chat messages"),
        "{stderr}"
    );
    let (qwen, llama) = (column(&t, "rm_0"), column(&t, "rm_1"));
    let err = max_abs_diff(&qwen, qwen_hf).max(max_abs_diff(&llama, llama_hf));
    eprintln!("max |score-rewards - transformers| over Qwen2 and Llama: {err:.2e}");
    // float32 on different kernels, scores O(1)
    assert!(
        err < 1e-4,
        "Qwen2 {qwen:?} vs transformers {qwen_hf:?}\nLlama {llama:?} vs transformers {llama_hf:?}"
    );
    let spread = qwen.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - qwen.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        spread > 0.1,
        "the fixture should give distinct scores: {qwen:?}"
    );
    assert_eq!(
        details["retokenized"],
        serde_json::json!({"rm_0": "chat_template", "rm_1": "chat_template"})
    );
    assert_eq!(
        details["retokenized_rows"],
        serde_json::json!({"rm_0": {"chat_template": n}, "rm_1": {"chat_template": n}})
    );

    // Rollouts without messages: the policy-rendered prompt text, which the reward models
    // score otherwise (so the comparison above can fail).
    let (text, details, _) = f.score("text.parquet", &["qwen", "llama"]);
    assert_eq!(
        details["retokenized"],
        serde_json::json!({"rm_0": "prompt_text", "rm_1": "prompt_text"})
    );
    let text_qwen = column(&text, "rm_0");
    assert!(
        max_abs_diff(&text_qwen, qwen_hf) > 1e-2,
        "prompt text scores as the chat template does: {text_qwen:?}"
    );

    // A reward model folder without a chat template: the prompt text, messages or not.
    let (plain, details, stderr) = f.score("messages.parquet", &["qwen-no-template"]);
    assert!(stderr.contains("has no chat template"), "{stderr}");
    assert_eq!(
        details["retokenized"],
        serde_json::json!({"rm": "prompt_text"})
    );
    assert_eq!(column(&plain, "rm"), text_qwen);

    // Some rows with messages, some without: each scored its own way, both counted.
    let (mixed, details, stderr) = f.score("mixed.parquet", &["qwen"]);
    assert_eq!(details["retokenized"], serde_json::json!({"rm": "mixed"}));
    assert_eq!(
        details["retokenized_rows"],
        serde_json::json!({"rm": {"chat_template": 9, "prompt_text": n - 9}})
    );
    assert!(
        stderr.contains("9 rollouts rendered with its chat template"),
        "{stderr}"
    );
    let mixed = column(&mixed, "rm");
    assert_eq!(mixed[..9], qwen[..9]);
    assert_eq!(mixed[9..], text_qwen[9..]);
}

#[test]
fn a_conversation_the_template_refuses_names_the_reward_model_and_the_rollout() {
    let f = Fixture::new();
    // The Llama template (Gemma-2 style) raises on a system turn.
    let mut with_system: Vec<Option<Vec<Message>>> = f.messages.iter().cloned().map(Some).collect();
    with_system[4]
        .as_mut()
        .unwrap()
        .insert(0, Message::new("system", "Be terse."));
    let policy = Tokenizer::from_dir(&f.root.join("policy")).unwrap();
    f.write_rollouts("system.parquet", Some(&with_system), policy.hash());
    let (r, o, llama) = (f.p("system.parquet"), f.p("s.parquet"), f.p("llama"));
    let (code, _, stderr) = run(&[
        "--rollouts",
        &r,
        "--out",
        &o,
        "--device",
        "cpu",
        "--retokenize",
        "--reward-model",
        &llama,
    ]);
    assert_eq!(code, 3, "{stderr}");
    let id = &f.rows[4].rollout_id;
    assert!(
        stderr.contains(&format!("rollout `{id}`"))
            && stderr.contains(&llama)
            && stderr.contains("System role not supported"),
        "{stderr}"
    );
    assert!(!Path::new(&o).exists());
    // The Qwen2 template takes it.
    let (t, _, _) = f.score("system.parquet", &["qwen"]);
    assert_eq!(t.rollout_id.len(), f.rows.len());
}
