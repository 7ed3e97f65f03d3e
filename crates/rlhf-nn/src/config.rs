//! Model configuration: a runtime mirror of Hugging Face `config.json` for the two supported
//! families (Llama family: llama, mistral, qwen2; GPT-2), read from and written back to the
//! HF format, plus named presets for `init-model`.
//!
//! Both rope spellings are read: transformers 5 (`rope_parameters`) and earlier
//! (`rope_theta` + `rope_scaling`); transformers 5's spelling is written.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{NnError, Result};

/// Transformer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama family: RMSNorm, RoPE, SwiGLU MLP, grouped-query attention (llama, mistral, qwen2).
    Llama,
    /// GPT-2: LayerNorm, learned positions, GELU MLP, Conv1D weights stored (in, out).
    Gpt2,
}

/// RoPE frequency scaling (`rope_type` in `rope_parameters` / `rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.1 style frequency-dependent scaling.
    Llama3 {
        /// Scale factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length of the original model.
        original_max_position_embeddings: f64,
    },
}

/// Model types this crate runs, with their family.
pub const SUPPORTED_MODEL_TYPES: &[(&str, Arch)] = &[
    ("llama", Arch::Llama),
    ("mistral", Arch::Llama),
    ("qwen2", Arch::Llama),
    ("gpt2", Arch::Gpt2),
];

/// Preset names accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &[
    "llama-tiny",
    "llama-small",
    "llama-30m",
    "qwen2-tiny",
    "gpt2-tiny",
];

/// Resolved model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// HF `model_type` (llama, mistral, qwen2, gpt2).
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: i64,
    /// Hidden size (`hidden_size` / `n_embd`).
    pub hidden_size: i64,
    /// MLP inner size (`intermediate_size` / `n_inner`, default 4*hidden for GPT-2).
    pub intermediate_size: i64,
    /// Number of transformer blocks.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Key/value heads (grouped-query attention); equals `num_heads` for GPT-2.
    pub num_kv_heads: i64,
    /// Per-head dimension.
    pub head_dim: i64,
    /// Longest sequence (`max_position_embeddings` / `n_positions`).
    pub max_position_embeddings: i64,
    /// Norm epsilon (`rms_norm_eps` / `layer_norm_epsilon`).
    pub norm_eps: f64,
    /// RoPE base (Llama family).
    pub rope_theta: f64,
    /// RoPE scaling (Llama family).
    pub rope_scaling: Option<RopeScaling>,
    /// Bias on q/k/v projections (qwen2 always; llama with `attention_bias`; GPT-2 always).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (llama `attention_bias`; GPT-2 always).
    pub o_bias: bool,
    /// Bias on MLP projections (llama `mlp_bias`; GPT-2 always).
    pub mlp_bias: bool,
    /// Output projection shares the input embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token(s).
    pub eos_token_ids: Vec<i64>,
    /// Padding token.
    pub pad_token_id: Option<i64>,
    /// Std of the normal initialisation for random weights.
    pub initializer_range: f64,
    /// The config.json this came from (kept so unknown keys survive a save).
    pub raw: Map<String, Value>,
}

fn cfg_err(path: &Path, key: &str, message: impl Into<String>) -> NnError {
    NnError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

struct Reader<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn int(&self, keys: &[&str]) -> Result<i64> {
        match self.opt_int(keys)? {
            Some(v) => Ok(v),
            None => Err(cfg_err(
                self.path,
                keys[0],
                "missing (expected a positive integer)",
            )),
        }
    }
    fn opt_int(&self, keys: &[&str]) -> Result<Option<i64>> {
        for k in keys {
            match self.map.get(*k) {
                None | Some(Value::Null) => continue,
                Some(v) => {
                    return v.as_i64().map(Some).ok_or_else(|| {
                        cfg_err(self.path, k, format!("expected an integer, found {v}"))
                    })
                }
            }
        }
        Ok(None)
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(self.path, key, format!("expected a number, found {v}"))),
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| cfg_err(self.path, key, format!("expected true/false, found {v}"))),
        }
    }
    fn opt_str(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(Value::as_str)
    }
    fn ids(&self, key: &str) -> Result<Vec<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        cfg_err(self.path, key, format!("expected integers, found {v}"))
                    })
                })
                .collect(),
            Some(v) => v.as_i64().map(|i| vec![i]).ok_or_else(|| {
                cfg_err(
                    self.path,
                    key,
                    format!("expected an integer or a list, found {v}"),
                )
            }),
        }
    }
}

impl ModelConfig {
    /// Reads `config.json` from a model folder (or a config.json path).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let file: PathBuf = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| NnError::io(&file, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| NnError::Json {
            path: file.clone(),
            source,
        })?;
        Self::from_hf_value(&value, &file)
    }

    /// Resolves a parsed config.json; `path` is used in error messages.
    pub fn from_hf_value(value: &Value, path: &Path) -> Result<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| cfg_err(path, "<root>", "expected a JSON object"))?;
        let r = Reader { path, map };
        let model_type = r
            .opt_str("model_type")
            .ok_or_else(|| {
                cfg_err(
                    path,
                    "model_type",
                    "missing (expected llama, mistral, qwen2 or gpt2)",
                )
            })?
            .to_string();
        let supported = SUPPORTED_MODEL_TYPES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let arch = SUPPORTED_MODEL_TYPES
            .iter()
            .find(|(n, _)| *n == model_type)
            .map(|(_, a)| *a)
            .ok_or_else(|| NnError::UnknownArch {
                path: path.to_path_buf(),
                found: model_type.clone(),
                supported,
            })?;
        let cfg = match arch {
            Arch::Llama => Self::llama_from(&r, model_type, map)?,
            Arch::Gpt2 => Self::gpt2_from(&r, map)?,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn llama_from(r: &Reader, model_type: String, map: &Map<String, Value>) -> Result<Self> {
        let act = r.opt_str("hidden_act").unwrap_or("silu");
        if act != "silu" {
            return Err(cfg_err(
                r.path,
                "hidden_act",
                format!("expected \"silu\", found {act:?}"),
            ));
        }
        let hidden_size = r.int(&["hidden_size"])?;
        let num_heads = r.int(&["num_attention_heads"])?;
        let num_kv_heads = r.opt_int(&["num_key_value_heads"])?.unwrap_or(num_heads);
        let head_dim = match r.opt_int(&["head_dim"])? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let attention_bias = r.opt_bool("attention_bias")?.unwrap_or(false);
        let qwen = model_type == "qwen2";
        let (rope_theta, rope_scaling) = read_rope(r)?;
        Ok(ModelConfig {
            arch: Arch::Llama,
            vocab_size: r.int(&["vocab_size"])?,
            hidden_size,
            intermediate_size: r.int(&["intermediate_size"])?,
            num_layers: r.int(&["num_hidden_layers"])?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: r.opt_int(&["max_position_embeddings"])?.unwrap_or(2048),
            norm_eps: r.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qkv_bias: qwen || attention_bias,
            o_bias: !qwen && attention_bias,
            mlp_bias: r.opt_bool("mlp_bias")?.unwrap_or(false),
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: r.opt_int(&["bos_token_id"])?,
            eos_token_ids: r.ids("eos_token_id")?,
            pad_token_id: r.opt_int(&["pad_token_id"])?,
            initializer_range: r.opt_f64("initializer_range")?.unwrap_or(0.02),
            model_type,
            raw: map.clone(),
        })
    }

    fn gpt2_from(r: &Reader, map: &Map<String, Value>) -> Result<Self> {
        let act = r.opt_str("activation_function").unwrap_or("gelu_new");
        if act != "gelu_new" {
            return Err(cfg_err(
                r.path,
                "activation_function",
                format!("expected \"gelu_new\", found {act:?}"),
            ));
        }
        for (key, want) in [
            ("scale_attn_by_inverse_layer_idx", false),
            ("reorder_and_upcast_attn", false),
            ("scale_attn_weights", true),
        ] {
            if let Some(v) = r.opt_bool(key)? {
                if v != want {
                    return Err(cfg_err(
                        r.path,
                        key,
                        format!("expected {want}, found {v} (not implemented)"),
                    ));
                }
            }
        }
        let hidden_size = r.int(&["n_embd", "hidden_size"])?;
        let num_heads = r.int(&["n_head", "num_attention_heads"])?;
        let intermediate_size = match r.opt_int(&["n_inner"])? {
            Some(n) => n,
            None => hidden_size
                .checked_mul(4)
                .ok_or_else(|| cfg_err(r.path, "n_embd", format!("{hidden_size} is too large")))?,
        };
        Ok(ModelConfig {
            arch: Arch::Gpt2,
            model_type: "gpt2".into(),
            vocab_size: r.int(&["vocab_size"])?,
            hidden_size,
            intermediate_size,
            num_layers: r.int(&["n_layer", "num_hidden_layers"])?,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: if num_heads > 0 {
                hidden_size / num_heads
            } else {
                0
            },
            max_position_embeddings: r.int(&["n_positions", "max_position_embeddings"])?,
            norm_eps: r.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            rope_theta: 0.0,
            rope_scaling: None,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            bos_token_id: r.opt_int(&["bos_token_id"])?,
            eos_token_ids: r.ids("eos_token_id")?,
            pad_token_id: r.opt_int(&["pad_token_id"])?,
            initializer_range: r.opt_f64("initializer_range")?.unwrap_or(0.02),
            raw: map.clone(),
        })
    }

    /// Checks sizes are positive and consistent; errors name the key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                return Err(cfg_err(
                    path,
                    key,
                    format!("expected a positive integer, found {v}"),
                ));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(cfg_err(
                path,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 && self.arch == Arch::Llama {
            return Err(cfg_err(
                path,
                "head_dim",
                format!("expected an even number for RoPE, found {}", self.head_dim),
            ));
        }
        if self.arch == Arch::Gpt2 && self.hidden_size % self.num_heads != 0 {
            return Err(cfg_err(
                path,
                "n_head",
                format!(
                    "{} does not divide n_embd {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// The config.json to write beside saved weights: the original keys, with every field
    /// this struct models overwritten by its current value.
    pub fn to_hf_json(&self) -> Value {
        let mut m = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set("model_type", json!(self.model_type));
        set("vocab_size", json!(self.vocab_size));
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        set("bos_token_id", json!(self.bos_token_id));
        set("eos_token_id", eos);
        set("pad_token_id", json!(self.pad_token_id));
        set("tie_word_embeddings", json!(self.tie_word_embeddings));
        set("initializer_range", json!(self.initializer_range));
        match self.arch {
            Arch::Llama => {
                if !m.contains_key("architectures") {
                    m.insert(
                        "architectures".into(),
                        json!([arch_class(&self.model_type, "ForCausalLM")]),
                    );
                }
                let mut set = |k: &str, v: Value| {
                    m.insert(k.to_string(), v);
                };
                set("hidden_size", json!(self.hidden_size));
                set("intermediate_size", json!(self.intermediate_size));
                set("num_hidden_layers", json!(self.num_layers));
                set("num_attention_heads", json!(self.num_heads));
                set("num_key_value_heads", json!(self.num_kv_heads));
                set("head_dim", json!(self.head_dim));
                set("hidden_act", json!("silu"));
                set(
                    "max_position_embeddings",
                    json!(self.max_position_embeddings),
                );
                set("rms_norm_eps", json!(self.norm_eps));
                if self.model_type != "qwen2" {
                    set("attention_bias", json!(self.qkv_bias));
                    set("mlp_bias", json!(self.mlp_bias));
                }
                let mut rope = Map::new();
                rope.insert("rope_theta".into(), json!(self.rope_theta));
                match &self.rope_scaling {
                    None => {
                        rope.insert("rope_type".into(), json!("default"));
                    }
                    Some(RopeScaling::Linear { factor }) => {
                        rope.insert("rope_type".into(), json!("linear"));
                        rope.insert("factor".into(), json!(factor));
                    }
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        rope.insert("rope_type".into(), json!("llama3"));
                        rope.insert("factor".into(), json!(factor));
                        rope.insert("low_freq_factor".into(), json!(low_freq_factor));
                        rope.insert("high_freq_factor".into(), json!(high_freq_factor));
                        rope.insert(
                            "original_max_position_embeddings".into(),
                            json!(*original_max_position_embeddings as i64),
                        );
                    }
                }
                m.remove("rope_theta");
                m.remove("rope_scaling");
                m.insert("rope_parameters".into(), Value::Object(rope));
            }
            Arch::Gpt2 => {
                if !m.contains_key("architectures") {
                    m.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
                }
                let mut set = |k: &str, v: Value| {
                    m.insert(k.to_string(), v);
                };
                set("n_embd", json!(self.hidden_size));
                set("n_inner", json!(self.intermediate_size));
                set("n_layer", json!(self.num_layers));
                set("n_head", json!(self.num_heads));
                set("n_positions", json!(self.max_position_embeddings));
                set("layer_norm_epsilon", json!(self.norm_eps));
                set("activation_function", json!("gelu_new"));
            }
        }
        Value::Object(m)
    }

    /// A named preset for `init-model` (see [`PRESETS`]); set `vocab_size` and the special
    /// token ids from the tokenizer afterwards.
    pub fn preset(name: &str) -> Result<Self> {
        let llama = |hidden: i64, inter: i64, layers: i64, heads: i64, kv: i64| ModelConfig {
            arch: Arch::Llama,
            model_type: "llama".into(),
            vocab_size: 512,
            hidden_size: hidden,
            intermediate_size: inter,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hidden / heads,
            max_position_embeddings: 1024,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            initializer_range: 0.02,
            raw: Map::new(),
        };
        let cfg = match name {
            "llama-tiny" => llama(64, 172, 2, 4, 2),
            "llama-small" => llama(256, 688, 4, 8, 4),
            "llama-30m" => ModelConfig {
                vocab_size: 8192,
                ..llama(512, 1408, 8, 8, 4)
            },
            "qwen2-tiny" => ModelConfig {
                model_type: "qwen2".into(),
                qkv_bias: true,
                tie_word_embeddings: true,
                rope_theta: 1_000_000.0,
                ..llama(64, 172, 2, 4, 2)
            },
            "gpt2-tiny" => ModelConfig {
                arch: Arch::Gpt2,
                model_type: "gpt2".into(),
                intermediate_size: 256,
                num_kv_heads: 4,
                rope_theta: 0.0,
                qkv_bias: true,
                o_bias: true,
                mlp_bias: true,
                tie_word_embeddings: true,
                ..llama(64, 256, 2, 4, 4)
            },
            other => {
                return Err(cfg_err(
                    Path::new("<preset>"),
                    "preset",
                    format!(
                        "unknown preset `{other}`; expected one of {}",
                        PRESETS.join(", ")
                    ),
                ))
            }
        };
        Ok(cfg)
    }

    /// Number of parameters of the base model (embeddings counted once when tied).
    pub fn num_parameters(&self) -> i64 {
        let h = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let per_layer = match self.arch {
            Arch::Llama => h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h,
            Arch::Gpt2 => {
                4 * h * h
                    + 4 * h
                    + 2 * h * self.intermediate_size
                    + self.intermediate_size
                    + h
                    + 4 * h
            }
        };
        let emb = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        let pos = if self.arch == Arch::Gpt2 {
            self.max_position_embeddings * h
        } else {
            0
        };
        per_layer * self.num_layers + emb + pos + 2 * h
    }
}

fn arch_class(model_type: &str, suffix: &str) -> String {
    let stem = match model_type {
        "llama" => "Llama",
        "mistral" => "Mistral",
        "qwen2" => "Qwen2",
        "gpt2" => "GPT2",
        other => other,
    };
    format!("{stem}{suffix}")
}

/// Reads rope_theta and scaling from `rope_parameters` (transformers 5) or
/// `rope_theta` + `rope_scaling` (earlier).
fn read_rope(r: &Reader) -> Result<(f64, Option<RopeScaling>)> {
    let params = r.map.get("rope_parameters").and_then(Value::as_object);
    let legacy = r.map.get("rope_scaling").and_then(Value::as_object);
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
    {
        Some(t) => t,
        None => r.opt_f64("rope_theta")?.unwrap_or(10000.0),
    };
    let (key, scaling) = match (params, legacy) {
        (Some(p), _) => ("rope_parameters", p),
        (None, Some(l)) => ("rope_scaling", l),
        (None, None) => return Ok((theta, None)),
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        scaling
            .get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| cfg_err(r.path, &format!("{key}.{k}"), "missing (expected a number)"))
    };
    let s = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => {
            return Err(cfg_err(
                r.path,
                &format!("{key}.rope_type"),
                format!("`{other}` is not implemented; supported: default, linear, llama3"),
            ))
        }
    };
    Ok((theta, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rope_spellings_and_round_trips() {
        let v5 = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
        let a = ModelConfig::from_hf_value(&v5, Path::new("a")).unwrap();
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.num_kv_heads, 1);
        assert_eq!(a.head_dim, 4);
        let v4 = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
        let b = ModelConfig::from_hf_value(&v4, Path::new("b")).unwrap();
        assert_eq!(a.rope_scaling, b.rope_scaling);
        let back = ModelConfig::from_hf_value(&a.to_hf_json(), Path::new("c")).unwrap();
        assert_eq!(back.rope_scaling, a.rope_scaling);
        assert_eq!(back.hidden_size, 8);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2});
        let err = ModelConfig::from_hf_value(&bad, Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("intermediate_size"), "{err}");
        let unk = json!({"model_type": "bert"});
        let err = ModelConfig::from_hf_value(&unk, Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bert") && err.contains("llama"), "{err}");
    }

    #[test]
    fn presets_validate() {
        for name in PRESETS {
            let cfg = ModelConfig::preset(name).unwrap();
            cfg.validate(Path::new(name)).unwrap();
            let back = ModelConfig::from_hf_value(&cfg.to_hf_json(), Path::new(name)).unwrap();
            assert_eq!(back.num_parameters(), cfg.num_parameters(), "{name}");
        }
        let n = ModelConfig::preset("llama-30m").unwrap().num_parameters();
        assert!((25_000_000..40_000_000).contains(&n), "{n}");
    }
}
