//! Fuzz (proptest) of the model-folder parsers: the safetensors reader
//! (`Checkpoint::open_file`, `Checkpoint::open_model_dir` with its index), config.json
//! (`ModelConfig::from_hf_json`) and adapter_config.json (`peft::read_adapter_config`,
//! `rlhf_core::adapter_meta::kind`, `recorded_base_id`). Inputs: random bytes, valid files
//! truncated or with bytes overwritten, safetensors headers assembled from random entries
//! (dtypes, negative and huge dimensions, offsets in and out of range, length prefixes up
//! to 2^64), and valid JSON documents with fields of the wrong type, missing, huge or
//! negative. Each gives a value or an error that is bad input (exit code 3), never a panic
//! or a libtorch error (crafted sizes are refused before anything is allocated for them). `RLHF_FUZZ_CASES` sets the
//! cases per property (default 256; `make fuzz` runs 20,000).

#[path = "../../rlhf-core/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use std::path::Path;
use std::sync::OnceLock;

use fuzz_common::{config, corruption, edited, json_document, Bytes};
use proptest::prelude::*;
use rlhf_core::adapter_meta;
use rlhf_nn::config::ModelConfig;
use rlhf_nn::peft::read_adapter_config;
use rlhf_nn::weights::{write_safetensors, Checkpoint};
use rlhf_nn::NnError;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

fn check_err(what: &str, e: &NnError) -> Result<(), TestCaseError> {
    prop_assert!(e.is_bad_input(), "{what}: not bad input: {e} ({e:?})");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// safetensors

/// A valid safetensors file with tensors of several dtypes (made once).
fn valid_safetensors() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = vec![
            (
                "model.embed_tokens.weight".to_string(),
                Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([4, 6]),
            ),
            (
                "lm_head.weight".to_string(),
                Tensor::ones([3, 2], (Kind::BFloat16, tch::Device::Cpu)),
            ),
            (
                "h.0.attn.bias".to_string(),
                Tensor::ones([2, 2], (Kind::Half, tch::Device::Cpu)),
            ),
            (
                "position_ids".to_string(),
                Tensor::arange(5, (Kind::Int64, tch::Device::Cpu)),
            ),
            (
                "empty".to_string(),
                Tensor::zeros([0, 3], (Kind::Float, tch::Device::Cpu)),
            ),
        ];
        write_safetensors(&path, &tensors).unwrap();
        std::fs::read(&path).unwrap()
    })
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "BOOL", "U8", "I8", "F8_E4M3", "", "f32",
];

/// Dimensions: small, zero, negative, and products that overflow 64 bits.
fn dim() -> impl Strategy<Value = Value> {
    let edges = [
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(-1),
        json!(-2),
        json!(1i64 << 31),
        json!(1i64 << 32),
        json!(1i64 << 61),
        json!(1i64 << 62),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!("2"),
        json!(null),
    ];
    prop_oneof![
        4 => (0i64..5).prop_map(Value::from),
        4 => prop::sample::select(edges.to_vec()),
    ]
}

/// One header entry: (name, dtype, shape, offsets choice, raw offsets).
#[derive(Debug, Clone)]
struct EntrySpec {
    name: String,
    dtype: String,
    shape: Vec<Value>,
    /// true: offsets that match the dtype and shape as the reader computes the size
    /// (wrapping, so overflowing shapes are matched too); false: `offsets` as given.
    consistent: bool,
    offsets: Value,
}

fn entry() -> impl Strategy<Value = EntrySpec> {
    let name = prop_oneof![
        Just("w".to_string()),
        Just("model.layers.0.mlp.up_proj.weight".to_string()),
        Just("__metadata__".to_string()),
        any::<String>(),
    ];
    let dtype = prop_oneof![
        4 => prop::sample::select(DTYPES).prop_map(String::from),
        1 => any::<String>(),
    ];
    let offsets = prop_oneof![
        prop::collection::vec(prop_oneof![0u64..64, any::<u64>()], 0..4).prop_map(|v| json!(v)),
        Just(json!([0, 1_000_000_000_000_000_000u64])),
        Just(json!([-1, 4])),
        Just(json!([0.0, 4.0])),
        Just(json!("0,4")),
        Just(Value::Null),
    ];
    (
        name,
        dtype,
        prop::collection::vec(dim(), 0..4),
        prop::bool::weighted(0.7),
        offsets,
    )
        .prop_map(|(name, dtype, shape, consistent, offsets)| EntrySpec {
            name,
            dtype,
            shape,
            consistent,
            offsets,
        })
}

fn elt_size(dtype: &str) -> u64 {
    match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    }
}

/// The file bytes: 8-byte little-endian header length (the true one, or a claim), the
/// JSON header of `entries`, then the data bytes the consistent entries need.
fn assemble(entries: &[EntrySpec], claim: Option<u64>, fill: u8) -> Vec<u8> {
    let mut header = Map::new();
    let mut data_len = 0u64;
    for e in entries {
        let offsets = if e.consistent {
            // The byte count as a reader multiplying without overflow checks sees it.
            let numel = e
                .shape
                .iter()
                .filter_map(Value::as_i64)
                .fold(1i64, i64::wrapping_mul);
            let bytes = (numel as u64).wrapping_mul(elt_size(&e.dtype));
            if bytes > 4096 {
                e.offsets.clone()
            } else {
                let o = json!([data_len, data_len + bytes]);
                data_len += bytes;
                o
            }
        } else {
            e.offsets.clone()
        };
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": offsets}),
        );
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = claim.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend(std::iter::repeat_n(fill, data_len as usize));
    out
}

fn claim() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(vec![0u64, 1, 7, 8, 1_000_000_000_000_000_000, u64::MAX, 99_999_999, 100_000_001]).prop_map(Some),
        1 => any::<u64>().prop_map(Some),
    ]
}

/// Opens `bytes` as a safetensors file, and as the model.safetensors of a folder.
fn open_safetensors(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let read = match Checkpoint::open_file(&path) {
        Ok(_) => true,
        Err(e) => {
            check_err("Checkpoint::open_file", &e)?;
            false
        }
    };
    if let Err(e) = Checkpoint::open_model_dir(dir.path()) {
        check_err("Checkpoint::open_model_dir", &e)?;
    }
    Ok(read)
}

// ---------------------------------------------------------------------------------------
// config.json and adapter_config.json

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
    "n_embd",
    "n_head",
    "n_layer",
    "n_positions",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "use_dora",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "base_model_name_or_path",
    "base_id",
    "extra",
];

const CONFIG_TEXTS: &[&str] = &[
    "llama",
    "qwen2",
    "mistral",
    "gpt2",
    "silu",
    "gelu_new",
    "linear",
    "llama3",
    "dynamic",
    "LORA",
    "CAUSAL_LM",
    "SEQ_CLS",
    "none",
    "all",
    "all-linear",
    "q_proj",
    "c_attn",
    ".*proj",
];

fn texts() -> BoxedStrategy<String> {
    fuzz_common::text(CONFIG_TEXTS)
}

fn valid_configs() -> Vec<Value> {
    let mut out: Vec<Value> = ["llama-tiny", "qwen2-tiny", "gpt2-tiny"]
        .iter()
        .map(|p| ModelConfig::preset(p).unwrap().to_hf_json())
        .collect();
    let mut llama3 = out[0].clone();
    llama3["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    llama3["eos_token_id"] = json!([1, 2]);
    out.push(llama3);
    out
}

fn valid_adapter_configs() -> Vec<Value> {
    vec![
        json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
               "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none",
               "use_dora": false, "use_rslora": false, "rank_pattern": {}, "alpha_pattern": {},
               "modules_to_save": null, "base_model_name_or_path": "base"}),
        json!({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 4.0,
               "target_modules": "all-linear", "modules_to_save": ["score"]}),
    ]
}

/// A JSON file: a valid document edited, a valid one corrupted, random keys, or bytes.
fn json_file(valid: Vec<Value>) -> BoxedStrategy<Bytes> {
    let originals: Vec<Vec<u8>> = valid
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    prop_oneof![
        4 => edited(valid, CONFIG_KEYS, texts(), 3).prop_map(|v| Bytes(serde_json::to_vec(&v).unwrap())),
        1 => (prop::sample::select(originals), corruption()).prop_map(|(b, c)| Bytes(c.apply(&b))),
        1 => json_document(CONFIG_KEYS, texts(), 10).prop_map(|v| Bytes(serde_json::to_vec(&v).unwrap())),
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Bytes),
    ]
    .boxed()
}

fn check_config(dir: &Path) -> Result<(), TestCaseError> {
    match ModelConfig::from_hf_json(dir) {
        Ok(cfg) => {
            prop_assert!(cfg.validate(dir).is_ok());
            // What we save loads back to the same configuration.
            let saved = cfg.to_hf_json();
            let back = ModelConfig::from_hf_value(&saved, dir);
            prop_assert!(
                back.is_ok(),
                "saved config does not load: {back:?}\n{saved}"
            );
            prop_assert_eq!(back.unwrap().to_hf_json(), saved);
        }
        Err(e) => check_err("ModelConfig::from_hf_json", &e)?,
    }
    Ok(())
}

fn check_adapter(dir: &Path) -> Result<(), TestCaseError> {
    match read_adapter_config(dir) {
        Ok((cfg, _)) => prop_assert!(cfg.validate().is_ok()),
        Err(e) => check_err("read_adapter_config", &e)?,
    }
    if let Err(e) = adapter_meta::kind(dir) {
        prop_assert!(e.is_bad_input(), "adapter_meta::kind: {e}");
    }
    if let Err(e) = adapter_meta::recorded_base_id(dir) {
        prop_assert!(e.is_bad_input(), "adapter_meta::recorded_base_id: {e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_bytes_are_not_safetensors(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        open_safetensors(&bytes)?;
    }

    #[test]
    fn corrupted_safetensors_read_or_are_bad_input(c in corruption()) {
        let valid = valid_safetensors();
        let bytes = c.apply(valid);
        let read = open_safetensors(&bytes)?;
        if bytes.len() < valid.len() {
            prop_assert!(!read, "a file cut to {} of {} bytes was read", bytes.len(), valid.len());
        }
    }

    #[test]
    fn assembled_headers_read_or_are_bad_input(
        entries in prop::collection::vec(entry(), 0..4),
        claim in claim(),
        fill in any::<u8>(),
    ) {
        open_safetensors(&assemble(&entries, claim, fill))?;
    }

    #[test]
    fn random_indexes_read_or_are_bad_input(
        index in json_document(&["weight_map", "metadata", "w", "model.safetensors"],
                               fuzz_common::text(&["model.safetensors", "../model.safetensors", "shard.safetensors", "/dev/null", "model.safetensors.index.json", ""]), 4),
        weight_map in prop::collection::vec((any::<String>(), prop::sample::select(vec![
            json!("shard.safetensors"), json!("missing.safetensors"), json!("../x.safetensors"),
            json!(""), json!("model.safetensors.index.json"), json!(7), json!(null)])), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shard.safetensors"), valid_safetensors()).unwrap();
        let mut index = index;
        if !weight_map.is_empty() {
            index = json!({"metadata": {}, "weight_map": weight_map.into_iter().collect::<Map<_, _>>()});
        }
        std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        if let Err(e) = Checkpoint::open_model_dir(dir.path()) {
            check_err("Checkpoint::open_model_dir", &e)?;
        }
    }

    #[test]
    fn random_config_json_loads_or_is_bad_input(file in json_file(valid_configs())) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &file.0).unwrap();
        check_config(dir.path())?;
    }

    #[test]
    fn random_adapter_config_json_loads_or_is_bad_input(
        file in json_file(valid_adapter_configs()),
        state in json_file(vec![json!({"base_id": "abc", "step": 3}), json!({"extra": {"base_id": "abc"}})]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), &file.0).unwrap();
        std::fs::write(dir.path().join("rlhf_state.json"), &state.0).unwrap();
        check_adapter(dir.path())?;
    }
}

#[test]
fn valid_files_load() {
    assert!(open_safetensors(valid_safetensors()).unwrap());
    for cfg in valid_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        ModelConfig::from_hf_json(dir.path()).unwrap();
    }
    for cfg in valid_adapter_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        read_adapter_config(dir.path()).unwrap();
        assert!(adapter_meta::kind(dir.path()).unwrap().is_some());
    }
}

/// Opens assembled safetensors bytes; the error message when it fails.
fn open_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match Checkpoint::open_file(&path) {
        Ok(_) => String::new(),
        Err(e) => {
            assert!(e.is_bad_input(), "not bad input: {e:?}");
            e.to_string()
        }
    }
}

#[test]
fn header_lengths_beyond_the_file_are_refused_before_allocating() {
    for claim in [1_000_000_000_000_000_000u64, u64::MAX, 99_999_999] {
        let err = open_error(&assemble(&[], Some(claim), 0));
        assert!(err.contains(&format!("header length {claim}")), "{err}");
    }
}

/// A one-tensor file: `shape` as JSON, data_offsets [0, len] and `len` data bytes.
fn one_tensor(dtype: &str, shape: Value, len: u64) -> Vec<u8> {
    let header = json!({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, len]}});
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend(std::iter::repeat_n(1u8, len as usize));
    out
}

// Regression: shapes with negative dimensions, or whose size overflows 64 bits and wraps
// around to the byte count of the offsets, passed the size check and reached libtorch
// (an "Internal torch error", exit code 1; in a debug build, an overflow panic).
// Dimensions that were not integers were dropped from the shape.
#[test]
fn negative_overflowing_and_non_integer_dimensions_are_refused() {
    for (dtype, shape, len) in [
        ("F32", json!([i64::MIN]), 0),
        ("F32", json!([1i64 << 62]), 0),
        ("F64", json!([1i64 << 61]), 0),
        ("U8", json!([1i64 << 32, 1i64 << 32]), 0),
        ("F32", json!([0, 2, 1i64 << 62]), 0),
        ("U8", json!([-1, -4]), 4),
        ("F32", json!([-1]), 0),
        ("F32", json!(["2", 1]), 4),
        ("F32", json!([1.0, 1]), 4),
    ] {
        let err = open_error(&one_tensor(dtype, shape.clone(), len));
        assert!(err.contains("`w`"), "{shape}: {err}");
    }
    assert_eq!(open_error(&one_tensor("F32", json!([2, 1]), 8)), "");
    assert_eq!(
        open_error(&one_tensor("F32", json!([0, 1i64 << 40]), 0)),
        ""
    );
}

// Regression: an empty or 5-byte model.safetensors (a failed download) and a config.json
// that is not UTF-8 were I/O errors, exit code 1 rather than 3.
#[test]
fn short_files_and_non_utf8_json_are_bad_input() {
    for bytes in [&b""[..], b"\x01\x02\x03\x04\x05"] {
        let err = open_error(bytes);
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"model_type\": \"\xff\"}",
    )
    .unwrap();
    let err = ModelConfig::from_hf_json(dir.path()).unwrap_err();
    assert!(err.is_bad_input(), "{err:?}");
}

// Regression: GPT-2's default n_inner (4 * n_embd) wrapped around for a huge n_embd
// (an overflow panic in a debug build; in a release build n_embd = 2^62 + 1 gave n_inner 4).
#[test]
fn a_huge_gpt2_width_is_refused_not_wrapped() {
    let mut cfg = ModelConfig::preset("gpt2-tiny").unwrap().to_hf_json();
    cfg["n_embd"] = json!((1i64 << 62) + 1);
    cfg["n_head"] = json!(1);
    cfg.as_object_mut().unwrap().remove("n_inner");
    let err = ModelConfig::from_hf_value(&cfg, Path::new("config.json")).unwrap_err();
    assert!(err.to_string().contains("n_embd"), "{err}");
}
