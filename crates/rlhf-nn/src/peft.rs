//! Adapter folders in PEFT's layout (checked against peft 0.21.2): `adapter_config.json`
//! (peft_type LORA, task_type CAUSAL_LM or SEQ_CLS, r, lora_alpha, target_modules, ...) and
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight` /
//! `.lora_B.weight`, and a head saved as PEFT saves `modules_to_save = ["score"]`:
//! `base_model.model.score.weight` (1, hidden).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::config::Arch;
use crate::error::{NnError, Result};
use crate::lora::{trainable, Adapter, Head, HeadKind, LoraConfig, LoraPair};
use crate::weights::{write_json, write_safetensors, Checkpoint};
use crate::Model;

/// PEFT's key prefix in adapter_model.safetensors.
pub const PEFT_PREFIX: &str = "base_model.model.";

fn bad(path: &Path, message: impl Into<String>) -> NnError {
    NnError::BadAdapter {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads `adapter_config.json` into a [`LoraConfig`], refusing PEFT features this crate does
/// not implement (DoRA, bias training, per-module rank/alpha patterns, other PEFT types).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, Value)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| NnError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| NnError::Json {
        path: path.clone(),
        source,
    })?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(bad(
            &path,
            format!("peft_type is {peft_type:?}, expected \"LORA\""),
        ));
    }
    if get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
        return Err(bad(
            &path,
            "use_dora is true: DoRA adapters are not supported",
        ));
    }
    let bias = get("bias").and_then(Value::as_str).unwrap_or("none");
    if bias != "none" {
        return Err(bad(
            &path,
            format!("bias is {bias:?}: only \"none\" is supported"),
        ));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(
                &path,
                format!("{k} is set: per-module ranks/alphas are not supported"),
            ));
        }
    }
    let r = get("r")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(&path, "`r` missing or not an integer"))?;
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad(&path, "`lora_alpha` missing or not a number"))?;
    let target_modules = match get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        Some(Value::String(s)) if s == "all-linear" => vec![s.clone()],
        Some(Value::String(s)) => {
            return Err(bad(&path, format!("target_modules is the regex {s:?}; only a list of names or \"all-linear\" is supported")))
        }
        _ => return Err(bad(&path, "`target_modules` missing")),
    };
    let cfg = LoraConfig {
        r,
        alpha,
        dropout: get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        target_modules,
        use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    };
    cfg.validate().map_err(|e| bad(&path, e.to_string()))?;
    Ok((cfg, v))
}

impl Model {
    /// Loads a PEFT adapter folder as adapter `name`. Every targeted module must have its
    /// lora_A/lora_B, shapes must match the base, and no tensor may be left unused.
    pub fn load_adapter(&mut self, name: &str, dir: &Path) -> Result<()> {
        if self.adapters.contains_key(name) {
            return Err(NnError::Adapter {
                name: name.into(),
                message: "already attached".into(),
            });
        }
        let (cfg, raw) = read_adapter_config(dir)?;
        self.check_lm_head_target(&cfg)
            .map_err(|e| bad(&dir.join("adapter_config.json"), e.to_string()))?;
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            if dir.join("adapter_model.bin").is_file() {
                return Err(NnError::PickleCheckpoint {
                    path: dir.join("adapter_model.bin"),
                });
            }
            return Err(NnError::NoWeights {
                dir: dir.to_path_buf(),
                expected: "adapter_model.safetensors".into(),
            });
        }
        let mut ck = Checkpoint::open_file(&file)?;
        let device = self.device();
        let canon = match self.cfg.arch {
            Arch::Llama => "model.",
            Arch::Gpt2 => "transformer.",
        };
        let mut pairs = Vec::new();
        let mut found = 0;
        for lin in self.linears() {
            let full = format!("{PEFT_PREFIX}{}", lin.name);
            // An adapter made on the headless body class (LlamaModel, GPT2Model) lacks the prefix.
            let bare = format!(
                "{PEFT_PREFIX}{}",
                lin.name.strip_prefix(canon).unwrap_or(&lin.name)
            );
            let stem = if ck.contains(&format!("{full}.lora_A.weight")) {
                full
            } else {
                bare
            };
            let (inp, out) = (lin.in_features(), lin.out_features());
            let a = ck.take_opt(&format!("{stem}.lora_A.weight"), &[cfg.r, inp])?;
            let b = ck.take_opt(&format!("{stem}.lora_B.weight"), &[out, cfg.r])?;
            match (a, b) {
                (Some(a), Some(b)) => {
                    found += 1;
                    pairs.push(Some(LoraPair {
                        a: trainable(a, device),
                        b: trainable(b, device),
                    }));
                }
                (None, None) if !cfg.targets(&lin.name) => pairs.push(None),
                _ => {
                    return Err(NnError::MissingTensor {
                        path: file.clone(),
                        name: format!("{stem}.lora_A.weight / lora_B.weight"),
                        hint: format!(
                            "; target_modules {:?} selects this module",
                            cfg.target_modules
                        ),
                    })
                }
            }
        }
        if found == 0 {
            return Err(bad(&file, format!(
                "no LoRA tensor matches this base model's modules (e.g. {PEFT_PREFIX}{}.lora_A.weight); the adapter was made for another architecture?",
                self.module_names.first().map(String::as_str).unwrap_or("?")
            )));
        }
        let h = self.cfg.hidden_size;
        let head_keys = [
            format!("{PEFT_PREFIX}score.weight"),
            format!("{PEFT_PREFIX}score.modules_to_save.default.weight"),
        ];
        let mut head = None;
        for k in &head_keys {
            if let Some(w) = ck.take_opt(k, &[1, h])? {
                head = Some(Head {
                    kind: HeadKind::Score,
                    weight: trainable(w, device),
                });
            }
        }
        let saves_score = raw
            .get("modules_to_save")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|m| m.as_str() == Some("score")));
        if raw.get("task_type").and_then(Value::as_str) == Some("SEQ_CLS")
            && saves_score
            && head.is_none()
        {
            return Err(NnError::MissingTensor {
                path: file.clone(),
                name: head_keys[0].clone(),
                hint: "; adapter_config.json is SEQ_CLS with modules_to_save [\"score\"]".into(),
            });
        }
        ck.finish("they match no module of this base model")?;
        self.adapters.insert(
            name.to_string(),
            Adapter {
                scale: cfg.scale(),
                config: cfg,
                pairs,
                head,
            },
        );
        Ok(())
    }

    /// Saves adapter `name` as a PEFT folder in `dir` (created if needed). Task type is
    /// SEQ_CLS with `modules_to_save: ["score"]` when it carries a head, else CAUSAL_LM.
    /// `base_model_name_or_path` is set from [`Model::set_base_name`] (null if unset).
    pub fn save_adapter(&self, name: &str, dir: &Path) -> Result<()> {
        let adapter = self.adapter(name)?;
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
        let linears = self.linears();
        let off: Vec<&str> = linears
            .iter()
            .filter(|l| adapter.pair(l.id).is_none())
            .map(|l| l.name.as_str())
            .collect();
        let mut targets: Vec<String> = linears
            .iter()
            .filter(|l| adapter.pair(l.id).is_some())
            .map(|l| target_suffix(&l.name, &off))
            .collect();
        targets.sort();
        targets.dedup();
        let has_head = adapter.head.is_some();
        let c = &adapter.config;
        let config = json!({
            "peft_type": "LORA",
            "task_type": if has_head { "SEQ_CLS" } else { "CAUSAL_LM" },
            "base_model_name_or_path": self.base_name,
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": targets,
            "use_rslora": c.use_rslora,
            "fan_in_fan_out": self.cfg.arch == Arch::Gpt2,
            "modules_to_save": if has_head { json!(["score"]) } else { Value::Null },
            "bias": "none",
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": null,
            "layers_pattern": null,
            "revision": null,
        });
        write_json(&dir.join("adapter_config.json"), &config)?;
        let tensors: Vec<(String, tch::Tensor)> = adapter
            .named(&self.module_names)
            .into_iter()
            .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t))
            .collect();
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)
    }
}

/// Reads the tensors of an adapter file keyed without the PEFT prefix (for tests and tools).
pub fn read_adapter_tensors(dir: &Path) -> Result<HashMap<String, tch::Tensor>> {
    let path = dir.join("adapter_model.safetensors");
    let tensors = tch::Tensor::read_safetensors(&path).map_err(|e| NnError::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(tensors
        .into_iter()
        .map(|(k, t)| (k.strip_prefix(PEFT_PREFIX).unwrap_or(&k).to_string(), t))
        .collect())
}

/// The shortest dotted suffix of `name` (PEFT matches `target_modules` entries by name
/// suffix) that selects no module in `untargeted`: `q_proj` for Llama, but `attn.c_proj`
/// for GPT-2 when only the attention output projection (not `mlp.c_proj`) is adapted.
fn target_suffix(name: &str, untargeted: &[&str]) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    for k in 1..=parts.len() {
        let suffix = parts[parts.len() - k..].join(".");
        let dotted = format!(".{suffix}");
        if !untargeted
            .iter()
            .any(|u| *u == suffix || u.ends_with(&dotted))
        {
            return suffix;
        }
    }
    name.to_string()
}

#[cfg(test)]
mod target_suffix_tests {
    use super::target_suffix;

    #[test]
    fn suffix_is_short_unless_it_would_select_an_untargeted_module() {
        let off = ["h.0.mlp.c_proj", "h.1.mlp.c_proj"];
        assert_eq!(target_suffix("h.0.attn.c_proj", &off), "attn.c_proj");
        assert_eq!(target_suffix("h.0.attn.c_attn", &off), "c_attn");
        assert_eq!(
            target_suffix("model.layers.0.self_attn.q_proj", &[]),
            "q_proj"
        );
    }
}
