//! The tokens that end a response. transformers' `generate` stops at every `eos_token_id` of
//! the model's generation defaults (generation_config.json, else config.json), and instruct
//! models list several there (Llama-3.1: `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`;
//! Qwen2.5: `<|im_end|>`, `<|endoftext|>`), while tokenizer_config.json names one EOS. A
//! response ends at any of them, the tokenizer's EOS included.

use std::path::Path;

use rlhf_core::error::CoreError;
use rlhf_core::tokenizer::Tokenizer;

/// The model's generation defaults file.
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// `eos_token_id` of a generation_config.json or config.json object: an id, a list of ids,
/// null or absent (none).
fn ids_of(value: &serde_json::Value, path: &Path) -> Result<Vec<i64>, CoreError> {
    let bad = |found: &serde_json::Value| CoreError::BadInput {
        path: path.to_path_buf(),
        row: None,
        message: format!("`eos_token_id` must be a token id or a list of token ids, found {found}"),
    };
    match value.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v @ serde_json::Value::Number(_)) => Ok(vec![v.as_i64().ok_or_else(|| bad(v))?]),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| bad(v)))
            .collect(),
        Some(other) => Err(bad(other)),
    }
}

/// The ids that end a response: the tokenizer's EOS, then the `eos_token_id`s of
/// `model_dir`'s generation_config.json, or of its config.json when it has none
/// (`config_eos`, as the model loader read them), as transformers' `generate` uses them.
pub fn response_end_ids(
    tokenizer: &Tokenizer,
    model_dir: &Path,
    config_eos: &[i64],
) -> Result<Vec<i32>, CoreError> {
    let path = model_dir.join(GENERATION_CONFIG);
    let model_ids = if path.is_file() {
        let text =
            std::fs::read_to_string(&path).map_err(|e| CoreError::io("reading", &path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
                path: path.clone(),
                row: None,
                message: format!("invalid JSON: {e}"),
            })?;
        ids_of(&value, &path)?
    } else {
        config_eos.to_vec()
    };
    let mut ids: Vec<i32> = tokenizer.eos_id().map(|e| e as i32).into_iter().collect();
    for id in model_ids {
        let id = i32::try_from(id).map_err(|_| CoreError::BadInput {
            path: path.clone(),
            row: None,
            message: format!("`eos_token_id` {id} is not a token id"),
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<unk>` 0, `</s>` 1 (the EOS), `w2`, `w3`.
    fn word_tokenizer(dir: &Path) -> Tokenizer {
        rlhf_testkit::write_word_tokenizer(dir, 4);
        Tokenizer::from_dir(dir).unwrap()
    }

    #[test]
    fn generation_config_ids_join_the_tokenizer_eos() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path());
        // no generation_config.json: config.json's ids
        assert_eq!(response_end_ids(&tok, dir.path(), &[3]).unwrap(), [1, 3]);
        assert_eq!(response_end_ids(&tok, dir.path(), &[]).unwrap(), [1]);
        let gen = dir.path().join(GENERATION_CONFIG);
        for (text, want) in [
            (r#"{"eos_token_id": [1, 2]}"#, vec![1, 2]),
            (r#"{"eos_token_id": 2}"#, vec![1, 2]),
            (r#"{"eos_token_id": null}"#, vec![1]),
            (r#"{"bos_token_id": 0}"#, vec![1]),
        ] {
            std::fs::write(&gen, text).unwrap();
            // generation_config.json wins over config.json, as in transformers
            assert_eq!(
                response_end_ids(&tok, dir.path(), &[3]).unwrap(),
                want,
                "{text}"
            );
        }
        for text in [
            r#"{"eos_token_id": "x"}"#,
            r#"{"eos_token_id": [1.5]}"#,
            "{",
        ] {
            std::fs::write(&gen, text).unwrap();
            let err = response_end_ids(&tok, dir.path(), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(GENERATION_CONFIG), "{text}: {err}");
        }
    }
}
