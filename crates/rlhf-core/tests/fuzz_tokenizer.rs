//! Fuzz (proptest) of tokenizer loading (`Tokenizer::from_dir`): a model folder whose
//! tokenizer.json and tokenizer_config.json are random bytes, valid files truncated or with
//! bytes overwritten, or valid documents (BPE with byte-level pieces, WordLevel, Unigram)
//! with fields replaced by values of their own type or any JSON, or removed. Loading gives
//! a tokenizer or an error that is bad input (exit code 3), never a panic; a tokenizer
//! that loads then encodes random text, decodes random ids and renders its chat template
//! without panicking. `RLHF_FUZZ_CASES` sets the cases per property (default 256;
//! `make fuzz` runs 20,000).

mod fuzz_common;

use std::path::Path;

use fuzz_common::{config, corruption, edited, json_document, Bytes};
use proptest::prelude::*;
use rlhf_core::records::Message;
use rlhf_core::tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// Keys of tokenizer.json and tokenizer_config.json, for random documents.
const KEYS: &[&str] = &[
    "version",
    "added_tokens",
    "normalizer",
    "pre_tokenizer",
    "post_processor",
    "decoder",
    "model",
    "type",
    "vocab",
    "merges",
    "unk_token",
    "unk_id",
    "id",
    "content",
    "special",
    "normalized",
    "bos_token",
    "eos_token",
    "pad_token",
    "add_bos_token",
    "chat_template",
    "name",
    "template",
];

/// Strings a tokenizer's files hold.
const PIECES: &[&str] = &[
    "BPE",
    "WordLevel",
    "WordPiece",
    "Unigram",
    "ByteLevel",
    "Whitespace",
    "Metaspace",
    "Sequence",
    "Replace",
    "NFC",
    "NFKD",
    "Lowercase",
    "<s>",
    "</s>",
    "<unk>",
    "\u{2581}",
    "\u{120}",
    "default",
    "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "h e",
    " ",
    "(",
    "\\p{L}+",
];

const TEXTS: &[&str] = &[
    "hello the world",
    "<s>",
    "</s>",
    "\u{2581}",
    " ",
    "ll",
    "\u{0}",
];

/// A byte-level BPE tokenizer.json (GPT-2 style) with a few merges and special tokens.
fn bpe() -> Value {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut vocab: Vec<String> = alphabet.iter().map(char::to_string).collect();
    let merges = ["h e", "l l", "\u{120} t", "\u{120}t he"];
    vocab.extend(["he", "ll", "\u{120}t", "\u{120}the"].map(String::from));
    let n = vocab.len();
    let vocab: serde_json::Map<String, Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let added: Vec<Value> = ["<s>", "</s>", "<pad>"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": n + i, "content": t, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

/// A word-level tokenizer.json over whitespace, lower-cased.
fn word_level() -> Value {
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"},
                       {"type": "Replace", "pattern": {"String": "\t"}, "content": " "}]},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "the": 2, "world": 3},
                  "unk_token": "<unk>"}
    })
}

/// A Unigram tokenizer.json with Metaspace pieces (SentencePiece style).
fn unigram() -> Value {
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false,
                  "vocab": [["<unk>", 0.0], ["\u{2581}", -1.0], ["h", -2.0], ["e", -2.0], ["l", -2.0],
                            ["o", -2.0], ["\u{2581}hello", -1.5], ["t", -2.5], ["w", -2.5], ["r", -2.5], ["d", -2.5]]}
    })
}

fn tokenizer_config() -> Value {
    json!({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "special": true},
        "pad_token": "<pad>",
        "add_bos_token": true,
        "chat_template": "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    })
}

fn tokenizer_config_list() -> Value {
    json!({
        "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                          {"name": "default", "template": "{% for m in messages %}{{ m.content }}{% endfor %}"}]
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// What goes into one file of the folder (None: the file is absent).
fn file(valid: Vec<Value>) -> BoxedStrategy<Option<Bytes>> {
    let texts = fuzz_common::text(PIECES);
    let originals: Vec<Vec<u8>> = valid.iter().map(bytes).collect();
    prop_oneof![
        3 => edited(valid, KEYS, texts.clone(), 4).prop_map(|v| Some(Bytes(bytes(&v)))),
        2 => (prop::sample::select(originals), corruption()).prop_map(|(b, c)| Some(Bytes(c.apply(&b)))),
        1 => json_document(KEYS, texts, 8).prop_map(|v| Some(Bytes(bytes(&v)))),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| Some(Bytes(b))),
        1 => Just(None),
    ]
    .boxed()
}

fn tokenizer_json() -> BoxedStrategy<Option<Bytes>> {
    file(vec![bpe(), word_level(), unigram()])
}

fn config_json() -> BoxedStrategy<Option<Bytes>> {
    file(vec![tokenizer_config(), tokenizer_config_list()])
}

/// Loads a folder holding the given files and uses what loads.
fn load_and_use(
    tok: Option<&[u8]>,
    cfg: Option<&[u8]>,
    text: &str,
    ids: &[i32],
    msgs: &[Message],
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, b: Option<&[u8]>| {
        if let Some(b) = b {
            std::fs::write(dir.path().join(name), b).unwrap();
        }
    };
    write("tokenizer.json", tok);
    write("tokenizer_config.json", cfg);
    use_folder(dir.path(), text, ids, msgs)
}

fn use_folder(dir: &Path, text: &str, ids: &[i32], msgs: &[Message]) -> Result<(), TestCaseError> {
    let t = match Tokenizer::from_dir(dir) {
        Ok(t) => t,
        Err(e) => {
            prop_assert!(e.is_bad_input(), "{e:?}");
            return Ok(());
        }
    };
    prop_assert_eq!(t.hash().len(), 16);
    for add_bos in [false, true] {
        if let Err(e) = t.encode(text, add_bos) {
            prop_assert!(e.is_bad_input(), "{e:?}");
        }
    }
    if let Err(e) = t.decode(ids) {
        prop_assert!(e.is_bad_input(), "{e:?}");
    }
    let _ = (t.vocab_size(), t.eos_id(), t.pad_id, t.add_bos);
    match t.chat() {
        Ok(c) => {
            if let Err(e) = c.render(msgs, true) {
                prop_assert!(e.is_bad_input(), "{e:?}");
            }
        }
        Err(e) => prop_assert!(e.is_bad_input(), "{e:?}"),
    }
    Ok(())
}

fn ids() -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(prop_oneof![0i32..300, any::<i32>()], 0..12)
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["user", "assistant", "system", "x"]),
            fuzz_common::text(TEXTS),
        )
            .prop_map(|(r, c)| Message::new(r, &c)),
        0..4,
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_tokenizer_files_load_or_are_bad_input(
        tok in tokenizer_json(),
        cfg in prop_oneof![Just(Some(Bytes(bytes(&tokenizer_config())))), config_json()],
        text in fuzz_common::text(TEXTS),
        ids in ids(),
        msgs in messages(),
    ) {
        let (tok, cfg) = (tok.map(|b| b.0), cfg.map(|b| b.0));
        load_and_use(tok.as_deref(), cfg.as_deref(), &text, &ids, &msgs)?;
    }

    #[test]
    fn random_tokenizer_configs_load_or_are_bad_input(
        tok in prop::sample::select(vec![bpe(), word_level(), unigram()]),
        cfg in config_json(),
        text in fuzz_common::text(TEXTS),
        ids in ids(),
        msgs in messages(),
    ) {
        let cfg = cfg.map(|b| b.0);
        load_and_use(Some(&bytes(&tok)), cfg.as_deref(), &text, &ids, &msgs)?;
    }
}

#[test]
fn valid_tokenizers_load_and_round_trip() {
    for tok in [bpe(), word_level(), unigram()] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), bytes(&tok)).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            bytes(&tokenizer_config()),
        )
        .unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        let ids = t.encode("hello the world", false).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(t.decode(&ids).unwrap().trim(), "hello the world", "{tok}");
        let out = t
            .chat()
            .unwrap()
            .render(&[Message::new("user", "hi")], true);
        assert!(out.unwrap().ends_with("<|assistant|>"));
    }
}

// Regression: tokenizers 0.23.2 panicked (`expect("Helper")`) on a tokenizer.json whose
// JSON breaks inside the `decoder` object: cut off there (an interrupted download), or with
// a byte that is not UTF-8 or an invalid escape in it.
#[test]
fn a_tokenizer_json_broken_inside_the_decoder_is_an_error() {
    let full = bytes(&word_level());
    let at = full.windows(10).position(|w| w == b"\"decoder\":").unwrap() + 30;
    let cut = full[..at].to_vec();
    let mut not_utf8 = full.clone();
    not_utf8[at] = 0xff;
    let text = String::from_utf8(full).unwrap();
    let escape = text.replace("\"cleanup\"", "\"clean\\ud800\"");
    assert_ne!(escape, text);
    for broken in [cut, not_utf8, escape.into_bytes()] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), &broken).unwrap();
        let err = Tokenizer::from_dir(dir.path())
            .err()
            .expect("a broken file is refused");
        assert!(err.is_bad_input(), "{err}");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
