//! The tokenizer of a model folder: `tokenizer.json` (Hugging Face tokenizers) plus the
//! special tokens and chat template of `tokenizer_config.json`. Its content hash is what
//! artifacts record and later stages compare.

use std::path::{Path, PathBuf};

use crate::chat::ChatTemplate;
use crate::error::{CoreError, Result};

/// The files of a model folder that describe its tokenizer, in every format transformers
/// reads (fast `tokenizer.json`, GPT-2 style `vocab.json` + `merges.txt`, SentencePiece
/// `tokenizer.model`, and the chat template that transformers 5 keeps apart). Every stage
/// that writes a model folder copies those present from its input model.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
];

/// The generation defaults of a language model folder (copied beside the tokenizer files
/// into language-model outputs, not into reward models).
pub const GENERATION_FILES: &[&str] = &["generation_config.json"];

/// Copies the files among `names` that exist in `from` into `to`; returns the names copied.
pub fn copy_model_files(from: &Path, to: &Path, names: &[&str]) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in names {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| CoreError::io("copying", &src, e))?;
            copied.push((*name).to_string());
        }
    }
    Ok(copied)
}

/// A loaded tokenizer with its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    hash: String,
    /// Beginning-of-sequence token and id, when the model has one.
    pub bos: Option<(String, u32)>,
    /// End-of-sequence token and id.
    pub eos: Option<(String, u32)>,
    /// Padding token and id (falls back to EOS, then 0).
    pub pad_id: u32,
    /// Whether `encode` prepends BOS (tokenizer_config `add_bos_token`).
    pub add_bos: bool,
    /// Chat template from tokenizer_config.json, if any.
    pub chat_template: Option<String>,
}

fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| CoreError::io("reading", &path, e))?;
        // The tokenizers crate panics instead of returning an error when the JSON itself is
        // broken inside the `decoder` object (cut off, invalid UTF-8 or escapes:
        // `expect("Helper")` in 0.23.2). Parsing the whole file first, with the same parser
        // and limits, turns those into an error naming the file.
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| CoreError::Tokenizer {
            path: path.clone(),
            message: format!("not a valid tokenizer.json: invalid JSON: {e}"),
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| CoreError::Tokenizer {
                path: path.clone(),
                message: format!("not a valid tokenizer.json: {e}"),
            })?;
        let hash = blake3::hash(&bytes).to_hex()[..16].to_string();
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| CoreError::io("reading", &cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| CoreError::Tokenizer {
                path: cfg_path.clone(),
                message: format!("invalid JSON: {e}"),
            })?
        } else {
            serde_json::Value::Null
        };
        let special = |key: &str| -> Option<(String, u32)> {
            let text = cfg.get(key).and_then(token_text)?;
            let id = inner.token_to_id(&text)?;
            Some((text, id))
        };
        let bos = special("bos_token");
        let eos = special("eos_token");
        let pad_id = special("pad_token")
            .map(|p| p.1)
            .or(eos.as_ref().map(|e| e.1))
            .unwrap_or(0);
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        Ok(Tokenizer {
            inner,
            path,
            hash,
            bos,
            eos,
            pad_id,
            add_bos,
            chat_template,
        })
    }

    /// Content hash of tokenizer.json (16 hex chars).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The tokenizer.json path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped tokenizers-crate object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// EOS id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.1)
    }

    /// Token ids of a text. With `add_bos`, BOS is prepended when the model uses one
    /// (prompts); continuations are encoded without it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<i32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| CoreError::Tokenizer {
                path: self.path.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        let mut ids: Vec<i32> = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some((_, b)) = &self.bos {
                ids.push(*b as i32);
            }
        }
        ids.extend(enc.get_ids().iter().map(|&i| i as i32));
        Ok(ids)
    }

    /// Text of token ids, special tokens removed.
    pub fn decode(&self, ids: &[i32]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| CoreError::Tokenizer {
                path: self.path.clone(),
                message: format!("decoding failed: {e}"),
            })
    }

    /// The chat template of this tokenizer, or the plain fallback.
    pub fn chat(&self) -> Result<ChatTemplate> {
        let bos = self.bos.as_ref().map(|b| b.0.clone()).unwrap_or_default();
        let eos = self.eos.as_ref().map(|b| b.0.clone()).unwrap_or_default();
        match &self.chat_template {
            Some(t) => ChatTemplate::new(t, &bos, &eos),
            None => Ok(ChatTemplate::plain()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tokenizer_format_is_copied_and_only_what_exists() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        for name in [
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
            "model.safetensors",
        ] {
            std::fs::write(from.path().join(name), name).unwrap();
        }
        let copied = copy_model_files(from.path(), to.path(), TOKENIZER_FILES).unwrap();
        assert_eq!(copied, ["vocab.json", "merges.txt", "tokenizer.model"]);
        assert_eq!(
            std::fs::read_to_string(to.path().join("merges.txt")).unwrap(),
            "merges.txt"
        );
        assert!(!to.path().join("model.safetensors").exists());
        assert!(!to.path().join("tokenizer.json").exists());
    }
}
