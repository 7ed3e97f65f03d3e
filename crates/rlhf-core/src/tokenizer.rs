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
    /// Whether `encode` with `add_bos` prepends BOS: the post-processor of tokenizer.json
    /// puts BOS first (what transformers 5 follows), or tokenizer_config.json says
    /// `add_bos_token: true` (transformers 4's slow and Llama tokenizers).
    pub add_bos: bool,
    /// The chat template transformers would use: `chat_template.jinja` (where transformers 5
    /// writes it), else tokenizer_config.json's `chat_template` (a string, or the template
    /// named "default" of a list).
    pub chat_template: Option<String>,
    /// The template named "tool_use", which transformers renders instead when tools are given.
    pub tool_use_template: Option<String>,
    /// The file the chat template was read from.
    chat_template_path: PathBuf,
    /// The special-token variables of the chat template: every `*_token` of
    /// tokenizer_config.json (and special_tokens_map.json) that names a token, as
    /// transformers' `special_tokens_map` plus its model-specific tokens.
    special_tokens: serde_json::Map<String, serde_json::Value>,
}

fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// The special tokens a chat template sees, by variable name: every `*_token` key of the
/// config whose value is a token (a string, or an added-token object's `content`), the
/// entries of an `extra_special_tokens` object, then those of special_tokens_map.json that the
/// config lacks (transformers 5's `special_tokens_map` and model-specific tokens).
fn special_token_vars(
    cfg: &serde_json::Value,
    map: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let mut vars = serde_json::Map::new();
    let take = |obj: &serde_json::Value, vars: &mut serde_json::Map<String, serde_json::Value>| {
        let Some(obj) = obj.as_object() else { return };
        for (k, v) in obj {
            if k.ends_with("_token") && !vars.contains_key(k) {
                if let Some(t) = token_text(v) {
                    vars.insert(k.clone(), t.into());
                }
            }
        }
        if let Some(extra) = obj.get("extra_special_tokens").and_then(|e| e.as_object()) {
            for (k, v) in extra {
                if let Some(t) = token_text(v) {
                    vars.entry(k.clone()).or_insert(t.into());
                }
            }
        }
    };
    take(cfg, &mut vars);
    take(map, &mut vars);
    vars
}

/// Reads a JSON file of the model folder, `Null` when it is absent.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    if !path.exists() {
        return Ok(serde_json::Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::io("reading", path, e))?;
    serde_json::from_str(&text).map_err(|e| CoreError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// The chat templates of a model folder as transformers finds them: `chat_template.jinja`
/// (named "default") and `additional_chat_templates/NAME.jinja` take priority over the
/// config's `chat_template` (a string, or a list of `{name, template}`).
pub struct ChatTemplates {
    /// The template used without tools ("default", or the only one).
    pub default: Option<String>,
    /// The template named "tool_use", used instead when tools are given.
    pub tool_use: Option<String>,
    /// The file they come from.
    pub path: PathBuf,
}

fn find_chat_template(
    dir: &Path,
    cfg: &serde_json::Value,
    cfg_path: &Path,
) -> Result<ChatTemplates> {
    let mut named: Vec<(String, String)> = Vec::new();
    let mut path = cfg_path.to_path_buf();
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        let text =
            std::fs::read_to_string(&file).map_err(|e| CoreError::io("reading", &file, e))?;
        named.push(("default".into(), text));
        path = file;
    }
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let entries =
            std::fs::read_dir(&extra_dir).map_err(|e| CoreError::io("listing", &extra_dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CoreError::io("listing", &extra_dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".jinja") {
                files.push((stem.to_string(), entry.path()));
            }
        }
        files.sort();
        for (stem, file) in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| CoreError::io("reading", &file, e))?;
            if named.is_empty() {
                path = extra_dir.clone();
            }
            named.retain(|(n, _)| n != &stem);
            named.push((stem, text));
        }
    }
    let single = |t: Option<String>, path: PathBuf| ChatTemplates {
        default: t,
        tool_use: None,
        path,
    };
    if named.is_empty() {
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => {
                return Ok(single(Some(s.clone()), path));
            }
            Some(serde_json::Value::Array(list)) => {
                for t in list {
                    let name = t.get("name").and_then(|n| n.as_str());
                    let template = t.get("template").and_then(|t| t.as_str());
                    match (name, template) {
                        (Some(n), Some(t)) => named.push((n.to_string(), t.to_string())),
                        _ => {
                            return Err(CoreError::Tokenizer {
                                path,
                                message: "chat_template: every entry of the list must have a \
                                          `name` and a `template` string"
                                    .into(),
                            })
                        }
                    }
                }
            }
            Some(serde_json::Value::Null) | None => {}
            Some(other) => {
                return Err(CoreError::Tokenizer {
                    path,
                    message: format!(
                        "chat_template must be a string or a list of {{name, template}}, found {}",
                        match other {
                            serde_json::Value::Bool(_) => "a boolean",
                            serde_json::Value::Number(_) => "a number",
                            _ => "an object",
                        }
                    ),
                })
            }
        }
    }
    if named.is_empty() {
        return Ok(single(None, path));
    }
    let get = |name: &str| {
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    };
    let Some(default) = get("default") else {
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        return Err(CoreError::Tokenizer {
            path,
            message: format!(
                "chat templates {names:?} but none named \"default\": transformers cannot \
                 choose one either (hint: name the one to use \"default\", or write it to \
                 chat_template.jinja)"
            ),
        });
    };
    Ok(ChatTemplates {
        default: Some(default),
        tool_use: get("tool_use"),
        path,
    })
}

/// Whether the post-processor of tokenizer.json puts `bos` before a single sequence (what
/// `add_special_tokens=True` does in transformers).
fn post_processor_adds_bos(inner: &tokenizers::Tokenizer, bos: u32) -> bool {
    let (Ok(with), Ok(without)) = (inner.encode("a", true), inner.encode("a", false)) else {
        return false;
    };
    let (with, without) = (with.get_ids(), without.get_ids());
    with.first() == Some(&bos) && with[1..].starts_with(without)
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
        let cfg = read_json(&cfg_path)?;
        let special_map = read_json(&dir.join("special_tokens_map.json"))?;
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
        let add_bos = bos.as_ref().is_some_and(|(_, id)| {
            post_processor_adds_bos(&inner, *id)
                || cfg.get("add_bos_token").and_then(|v| v.as_bool()) == Some(true)
        });
        let templates = find_chat_template(dir, &cfg, &cfg_path)?;
        let special_tokens = special_token_vars(&cfg, &special_map);
        Ok(Tokenizer {
            inner,
            path,
            hash,
            bos,
            eos,
            pad_id,
            add_bos,
            chat_template: templates.default,
            tool_use_template: templates.tool_use,
            chat_template_path: templates.path,
            special_tokens,
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
    /// (prompts) and the text does not already start with it (a chat template that writes
    /// `bos_token` gets one BOS, not two); continuations are encoded without it.
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
                if enc.get_ids().first() != Some(b) {
                    ids.push(*b as i32);
                }
            }
        }
        ids.extend(enc.get_ids().iter().map(|&i| i as i32));
        Ok(ids)
    }

    /// Token ids of a text the model's chat template rendered, exactly as
    /// `apply_chat_template(..., tokenize=True)` makes them: the text's own tokens, no special
    /// token added (the template writes BOS itself when the model wants one).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<i32>> {
        self.encode(text, false)
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

    /// The chat template of this tokenizer (with its special tokens), or the plain fallback.
    pub fn chat(&self) -> Result<ChatTemplate> {
        let Some(t) = &self.chat_template else {
            return Ok(ChatTemplate::plain());
        };
        let mut chat = ChatTemplate::with_special_tokens(
            t,
            &self.chat_template_path,
            self.special_tokens.clone(),
        )?;
        if let Some(tool_use) = &self.tool_use_template {
            chat.add_tool_use_template(tool_use)?;
        }
        Ok(chat)
    }

    /// The special-token variables a chat template sees (`bos_token`, `eos_token`, ...).
    pub fn special_tokens(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.special_tokens
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

    #[test]
    fn chat_templates_are_found_where_transformers_looks() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"hi":1},"unk_token":"<unk>"}}"#;
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        let cfg = |v: serde_json::Value| {
            std::fs::write(dir.path().join("tokenizer_config.json"), v.to_string()).unwrap()
        };
        // Named templates without "default": transformers refuses to choose, so do we.
        cfg(serde_json::json!({"chat_template": [{"name": "rag", "template": "x"}]}));
        let err = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("none named \"default\"") && err.contains("rag"),
            "{err}"
        );
        cfg(
            serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"},
                                                  {"name": "default", "template": "D"}]}),
        );
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("D"));
        assert_eq!(t.tool_use_template.as_deref(), Some("T"));
        // chat_template.jinja wins over the config.
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("J"));
        assert_eq!(t.tool_use_template, None);
        let out = t.chat().unwrap().render(&[], false).unwrap();
        assert_eq!(out, "J");
    }
}
