//! What goes into the merged folder besides the weights: config.json for the right
//! transformers class (a *ForCausalLM for policy adapters, a *ForSequenceClassification with
//! one label for reward adapters) and the tokenizer files of the base.

use std::path::Path;

use anyhow::Result;
use rlhf_nn::{Arch, ModelConfig};
use serde_json::{json, Value};

/// What the merged folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A policy (or SFT) adapter: language-model head, *ForCausalLM.
    CausalLm,
    /// A reward adapter with its score head: *ForSequenceClassification, num_labels = 1.
    SequenceClassification,
}

/// The transformers class prefix of a Llama-family config ("Llama", "Qwen2", "Mistral").
fn class_prefix(cfg: &ModelConfig) -> String {
    let from_arch = cfg
        .raw
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .and_then(|a| {
            ["ForCausalLM", "ForSequenceClassification", "Model"]
                .iter()
                .find_map(|s| a.strip_suffix(s))
        })
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    from_arch.unwrap_or_else(|| match cfg.model_type.as_str() {
        "qwen2" => "Qwen2".into(),
        "mistral" => "Mistral".into(),
        _ => "Llama".into(),
    })
}

/// The transformers class written in `architectures`.
pub fn architecture(cfg: &ModelConfig, kind: OutputKind) -> String {
    match (cfg.arch, kind) {
        (Arch::Gpt2, OutputKind::CausalLm) => "GPT2LMHeadModel".into(),
        (Arch::Gpt2, OutputKind::SequenceClassification) => "GPT2ForSequenceClassification".into(),
        (Arch::Llama, OutputKind::CausalLm) => format!("{}ForCausalLM", class_prefix(cfg)),
        (Arch::Llama, OutputKind::SequenceClassification) => {
            format!("{}ForSequenceClassification", class_prefix(cfg))
        }
    }
}

/// config.json of the merged model: the base's keys, the output class, the dtype, and for
/// sequence classification one label.
pub fn config_json(cfg: &ModelConfig, kind: OutputKind, dtype_name: &str) -> Value {
    let mut v = cfg.to_hf_json();
    if let Some(m) = v.as_object_mut() {
        m.insert("architectures".into(), json!([architecture(cfg, kind)]));
        m.insert("dtype".into(), json!(dtype_name));
        m.remove("torch_dtype");
        match kind {
            OutputKind::SequenceClassification => {
                m.insert("num_labels".into(), json!(1));
                m.insert("id2label".into(), json!({"0": "LABEL_0"}));
                m.insert("label2id".into(), json!({"LABEL_0": 0}));
            }
            OutputKind::CausalLm => {
                for k in ["num_labels", "id2label", "label2id", "problem_type"] {
                    m.remove(k);
                }
            }
        }
    }
    v
}

/// Copies the tokenizer files (and generation_config.json for language models) from the
/// base folder; returns the names copied.
pub fn copy_side_files(base: &Path, out: &Path, kind: OutputKind) -> Result<Vec<String>> {
    use rlhf_core::tokenizer::{copy_model_files, GENERATION_FILES, TOKENIZER_FILES};
    let mut copied = copy_model_files(base, out, TOKENIZER_FILES)?;
    if kind == OutputKind::CausalLm {
        copied.extend(copy_model_files(base, out, GENERATION_FILES)?);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_base() {
        let mut cfg = ModelConfig::preset("qwen2-tiny").unwrap();
        assert_eq!(architecture(&cfg, OutputKind::CausalLm), "Qwen2ForCausalLM");
        cfg.raw
            .insert("architectures".into(), json!(["MistralForCausalLM"]));
        assert_eq!(
            architecture(&cfg, OutputKind::SequenceClassification),
            "MistralForSequenceClassification"
        );
        let g = ModelConfig::preset("gpt2-tiny").unwrap();
        assert_eq!(
            architecture(&g, OutputKind::SequenceClassification),
            "GPT2ForSequenceClassification"
        );
    }

    #[test]
    fn reward_config_has_one_label() {
        let cfg = ModelConfig::preset("llama-tiny").unwrap();
        let v = config_json(&cfg, OutputKind::SequenceClassification, "float32");
        assert_eq!(
            v["architectures"],
            json!(["LlamaForSequenceClassification"])
        );
        assert_eq!(v["num_labels"], 1);
        assert_eq!(v["id2label"], json!({"0": "LABEL_0"}));
        let v = config_json(&cfg, OutputKind::CausalLm, "bfloat16");
        assert_eq!(v["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(v["dtype"], "bfloat16");
        assert!(v.get("num_labels").is_none());
    }
}
