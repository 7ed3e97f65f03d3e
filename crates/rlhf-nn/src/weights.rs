//! Reading and writing safetensors checkpoints: a model folder (single `model.safetensors` or
//! shards listed in `model.safetensors.index.json`), or one file (adapters). Pickle checkpoints
//! are refused. Tensors are handed out by name with a shape check, and names nobody asked for
//! can be listed afterwards, so both missing and unexpected tensors are reported by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

use crate::error::{NnError, Result};

/// Tensors read from a checkpoint, on the CPU in their stored dtype.
pub struct Checkpoint {
    /// The folder or file, for messages.
    pub path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

fn kind_of(dtype: Dtype, path: &Path, name: &str) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        other => {
            return Err(NnError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
            })
        }
    })
}

fn read_file_into(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| NnError::Safetensors {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype(), path, &name)?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, t);
    }
    Ok(())
}

impl Checkpoint {
    /// Reads the weights of a Hugging Face model folder.
    pub fn open_model_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(NnError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut tensors = HashMap::new();
        if single.is_file() {
            read_file_into(&single, &mut tensors)?;
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| NnError::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| NnError::Json {
                    path: index.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| NnError::Config {
                    path: index.clone(),
                    key: "weight_map".into(),
                    message: "missing (expected an object tensor name -> shard file)".into(),
                })?;
            let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            for f in files {
                let shard = dir.join(f);
                if !shard.is_file() {
                    return Err(NnError::NoWeights {
                        dir: dir.to_path_buf(),
                        expected: format!("shard {f} (listed in model.safetensors.index.json)"),
                    });
                }
                read_file_into(&shard, &mut tensors)?;
            }
        } else {
            for pickle in [
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
                "model.pt",
            ] {
                if dir.join(pickle).exists() {
                    return Err(NnError::PickleCheckpoint {
                        path: dir.join(pickle),
                    });
                }
            }
            return Err(NnError::NoWeights {
                dir: dir.to_path_buf(),
                expected: "model.safetensors or model.safetensors.index.json".into(),
            });
        }
        Ok(Checkpoint {
            path: dir.to_path_buf(),
            tensors,
        })
    }

    /// Reads one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut tensors = HashMap::new();
        read_file_into(path, &mut tensors)?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// A checkpoint over tensors already in memory (random initialisation, tests).
    pub fn from_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Self {
        Checkpoint {
            path: path.to_path_buf(),
            tensors: tensors.into_iter().collect(),
        }
    }

    /// True when the checkpoint holds `name` (not yet taken).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match self.take_opt(name, shape)? {
            Some(t) => Ok(t),
            None => Err(NnError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                hint: self.hint_for(name),
            }),
        }
    }

    /// Like [`Checkpoint::take`], `None` when absent.
    pub fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        match self.tensors.remove(name) {
            None => Ok(None),
            Some(t) => {
                let found = t.size();
                if found != shape {
                    return Err(NnError::ShapeMismatch {
                        path: self.path.clone(),
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found,
                    });
                }
                Ok(Some(t))
            }
        }
    }

    /// Drops every remaining tensor whose name satisfies `pred` (e.g. GPT-2's `attn.bias` buffers).
    pub fn discard(&mut self, pred: impl Fn(&str) -> bool) {
        self.tensors.retain(|k, _| !pred(k));
    }

    /// Names not taken yet, sorted.
    pub fn remaining(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    /// Errors when tensors remain, naming the first few.
    pub fn finish(&self, hint: &str) -> Result<()> {
        let rest = self.remaining();
        if rest.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = rest.iter().take(5).map(String::as_str).collect();
        let more = if rest.len() > 5 {
            format!(" and {} more", rest.len() - 5)
        } else {
            String::new()
        };
        Err(NnError::UnexpectedTensor {
            path: self.path.clone(),
            names: format!("`{}`{more}", shown.join("`, `")),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        })
    }

    fn hint_for(&self, name: &str) -> String {
        let leaf = name.rsplit('.').take(3).collect::<Vec<_>>();
        let similar: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| leaf.len() >= 2 && k.ends_with(&format!("{}.{}", leaf[1], leaf[0])))
            .take(3)
            .collect();
        if similar.is_empty() {
            let mut some: Vec<&String> = self.tensors.keys().collect();
            some.sort();
            some.truncate(3);
            format!("; the file holds e.g. {some:?}")
        } else {
            format!("; similar names present: {similar:?} (a different prefix?)")
        }
    }
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors to a safetensors file with the `{"format": "pt"}` metadata transformers and
/// peft expect. Tensors are copied to the CPU; their dtype is kept.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut raws: BTreeMap<String, Raw> = BTreeMap::new();
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            other => {
                return Err(NnError::Argument(format!(
                    "cannot save tensor `{name}` of kind {other:?}"
                )))
            }
        };
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        raws.insert(name.clone(), Raw { dtype, shape, data });
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let views: Vec<(&str, &Raw)> = raws.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| {
        NnError::Safetensors {
            path: path.to_path_buf(),
            message: format!("cannot write: {e}"),
        }
    })
}

/// Writes a JSON value, pretty-printed with a trailing newline.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| NnError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| NnError::io(path, e))
}
