//! Byte-level BPE tokenizer training (GPT-2 style: bytes mapped to printable characters,
//! the GPT-2 split regex, no unknown token) with the tokenizers crate, and the two files
//! Hugging Face loads: `tokenizer.json` and `tokenizer_config.json`.
//!
//! Determinism: the tokenizers BPE trainer counts words in hash maps but picks merges by
//! (count, pair ids) from a heap with ids assigned in a sorted order, so the merges and the
//! vocabulary depend only on the text; `tokenizer.json` is serialised with the vocabulary
//! in id order. A test trains twice and compares the bytes.

use std::path::Path;

use rlhf_core::error::{CoreError, Result};
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

/// Beginning-of-sequence token.
pub const BOS: &str = "<|bos|>";
/// End-of-sequence token.
pub const EOS: &str = "<|eos|>";
/// Padding token.
pub const PAD: &str = "<|pad|>";

/// Ids of the special tokens (they come first in the vocabulary, in this order).
pub const BOS_ID: u32 = 0;
/// See [`BOS_ID`].
pub const EOS_ID: u32 = 1;
/// See [`BOS_ID`].
pub const PAD_ID: u32 = 2;

/// The smallest useful vocabulary: 3 special tokens, 256 byte symbols, one merge.
pub const MIN_VOCAB: usize = 3 + 256 + 1;

/// The chat template written to tokenizer_config.json: "User: ...\nAssistant: ...<eos>\n"
/// blocks, and "Assistant:" to open a reply. BOS is added by the tokenizer, not here.
pub const CHAT_TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// A trained tokenizer, serialised.
#[derive(Debug, Clone)]
pub struct TrainedTokenizer {
    /// tokenizer.json text.
    pub tokenizer_json: String,
    /// tokenizer_config.json text.
    pub config_json: String,
    /// Vocabulary size including the special tokens.
    pub vocab_size: usize,
}

type Builder = TokenizerBuilder<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

fn tok_err(message: String) -> CoreError {
    CoreError::Tokenizer {
        path: "tokenizer.json".into(),
        message,
    }
}

/// Trains a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts`.
/// `model_max_length` goes into tokenizer_config.json.
pub fn train(
    texts: &[String],
    vocab_size: usize,
    model_max_length: usize,
) -> Result<TrainedTokenizer> {
    if vocab_size < MIN_VOCAB {
        return Err(CoreError::Usage(format!(
            "--vocab-size {vocab_size} is too small: a byte-level BPE needs 256 byte symbols + 3 special tokens + merges (at least {MIN_VOCAB})"
        )));
    }
    let specials: Vec<AddedToken> = [BOS, EOS, PAD]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS}:0 $A:0"))
        .and_then(|b| b.try_pair(format!("{BOS}:0 $A:0 $B:1")))
        .map_err(|e| tok_err(format!("template: {e}")))?
        .special_tokens(vec![(BOS, BOS_ID)])
        .build()
        .map_err(|e| tok_err(format!("template: {e}")))?;
    let mut tokenizer = Builder::default()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, true,
        ))))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
        .with_post_processor(Some(PostProcessorWrapper::Template(post)))
        .build()
        .map_err(|e| tok_err(format!("building: {e}")))?;
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| tok_err(format!("training failed: {e}")))?;
    let vocab = tokenizer.get_model().get_vocab();
    for (token, id) in [(BOS, BOS_ID), (EOS, EOS_ID), (PAD, PAD_ID)] {
        if vocab.get(token) != Some(&id) {
            return Err(tok_err(format!(
                "special token {token} got id {:?}, expected {id}",
                vocab.get(token)
            )));
        }
    }
    let tokenizer_json = tokenizer
        .to_string(true)
        .map_err(|e| tok_err(format!("serialising: {e}")))?;
    let vocab_size = tokenizer.get_vocab_size(true);
    Ok(TrainedTokenizer {
        tokenizer_json,
        config_json: config_json(model_max_length),
        vocab_size,
    })
}

/// tokenizer_config.json: special tokens, BOS on, the chat template.
pub fn config_json(model_max_length: usize) -> String {
    let added = |content: &str| {
        json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
               "single_word": false, "special": true})
    };
    let cfg = json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "added_tokens_decoder": {
            BOS_ID.to_string(): added(BOS),
            EOS_ID.to_string(): added(EOS),
            PAD_ID.to_string(): added(PAD),
        },
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n"
}

/// Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir`.
pub fn write(dir: &Path, trained: &TrainedTokenizer) -> Result<()> {
    let special_map = json!({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD});
    let files = [
        ("tokenizer.json", trained.tokenizer_json.clone()),
        ("tokenizer_config.json", trained.config_json.clone()),
        (
            "special_tokens_map.json",
            serde_json::to_string_pretty(&special_map).unwrap_or_default() + "\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| CoreError::io("writing", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rlhf_core::tokenizer::Tokenizer;

    use super::*;

    fn corpus() -> Vec<String> {
        (0..300)
            .map(|i| {
                format!(
                    "User: add {i} and {}\nAssistant: the sum is {}",
                    i * 7,
                    i * 8
                )
            })
            .collect()
    }

    #[test]
    fn training_is_deterministic_and_round_trips_through_the_core_loader() {
        let a = train(&corpus(), 400, 256).unwrap();
        let b = train(&corpus(), 400, 256).unwrap();
        assert_eq!(a.tokenizer_json, b.tokenizer_json);
        assert_eq!(a.vocab_size, 400);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &a).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.bos, Some((BOS.to_string(), BOS_ID)));
        assert_eq!(tok.eos_id(), Some(EOS_ID));
        assert_eq!(tok.pad_id, PAD_ID);
        let text = "User: add 12 and 84\nAssistant: the sum is 96 ünïcode";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], BOS_ID as i32);
        assert!(ids.len() < text.len(), "merges should shorten {ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // The special tokens are recognised as single tokens inside text.
        let eos = tok.encode("done<|eos|>", false).unwrap();
        assert_eq!(*eos.last().unwrap(), EOS_ID as i32);
    }

    #[test]
    fn chat_template_renders_with_the_core_engine() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &train(&corpus(), 300, 64).unwrap()).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        let msgs = vec![
            rlhf_core::records::Message::new("user", "hi"),
            rlhf_core::records::Message::new("assistant", "hello"),
            rlhf_core::records::Message::new("user", "2+2?"),
        ];
        let out = tok.chat().unwrap().render(&msgs, true).unwrap();
        assert_eq!(
            out,
            "User: hi\nAssistant: hello<|eos|>\nUser: 2+2?\nAssistant:"
        );
    }

    #[test]
    fn too_small_vocab_is_a_usage_error() {
        let err = train(&corpus(), 100, 64).unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
    }
}
