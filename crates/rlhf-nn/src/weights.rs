//! Reading and writing safetensors checkpoints: a model folder (single `model.safetensors` or
//! shards listed in `model.safetensors.index.json`), or one file (adapters). Pickle checkpoints
//! are refused. Tensors are handed out by name with a shape check, and names nobody asked for
//! can be listed afterwards, so both missing and unexpected tensors are reported by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use tch::{Kind, Tensor};

use crate::error::{NnError, Result};

/// Tensors read from a checkpoint, on the CPU in their stored dtype.
pub struct Checkpoint {
    /// The folder or file, for messages.
    pub path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

fn kind_of(dtype: &str, path: &Path, name: &str) -> Result<Kind> {
    Ok(match dtype {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "BOOL" => Kind::Bool,
        "U8" => Kind::Uint8,
        other => {
            return Err(NnError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` has dtype {other}; expected F32, F16 or BF16"),
            })
        }
    })
}

/// One tensor's entry in a safetensors header.
struct Entry {
    name: String,
    kind: Kind,
    shape: Vec<i64>,
    begin: u64,
    end: u64,
}

/// Parses a safetensors header (the JSON after the 8-byte length) into entries sorted by
/// offset, checking each entry's byte range against its dtype, shape and the file size.
fn parse_header(path: &Path, header: &[u8], data_len: u64) -> Result<Vec<Entry>> {
    let bad = |message: String| NnError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| {
            bad(format!(
                "not a valid safetensors file: unreadable header: {e}"
            ))
        })?;
    let mut entries = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let kind = kind_of(dtype, path, &name)?;
        // Every dimension a non-negative integer and every offset an integer: a value of
        // another type is refused, not skipped.
        let shape: Option<Vec<i64>> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_i64().filter(|&d| d >= 0)).collect());
        let offsets: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Err(bad(format!(
                "header entry of `{name}` lacks shape or data_offsets, or they hold values \
                 that are not non-negative integers: {v}"
            )));
        };
        let (begin, end) = match offsets[..] {
            [b, e] if b <= e && e <= data_len => (b, e),
            _ => {
                return Err(bad(format!(
                    "tensor `{name}`: data_offsets {offsets:?} outside the {data_len} data bytes"
                )))
            }
        };
        // Checked, with empty dimensions counted as 1 as libtorch does for strides: a shape
        // whose size overflows must neither wrap around to the byte count of its offsets
        // nor reach libtorch.
        let span = shape
            .iter()
            .try_fold(kind.elt_size_in_bytes() as u64, |n, &d| {
                n.checked_mul((d as u64).max(1))
            })
            .filter(|&n| n <= i64::MAX as u64);
        let Some(span) = span else {
            return Err(bad(format!(
                "tensor `{name}`: shape {shape:?} {dtype} is too large"
            )));
        };
        let expected = if shape.contains(&0) { 0 } else { span };
        if end - begin != expected {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes for shape {shape:?} {dtype}, expected {expected}",
                end - begin
            )));
        }
        entries.push(Entry {
            name,
            kind,
            shape,
            begin,
            end,
        });
    }
    entries.sort_by_key(|e| e.begin);
    Ok(entries)
}

/// Reads a safetensors file tensor by tensor (one tensor's bytes in flight at a time), so
/// loading peaks near one copy of the weights rather than the file plus the tensors.
fn read_file_into(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e| NnError::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(NnError::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "not a valid safetensors file: {file_len} bytes, shorter than its 8-byte header length"
            ),
        });
    }
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(io)?;
    let n = u64::from_le_bytes(len8);
    if n.saturating_add(8) > file_len || n > 100_000_000 {
        return Err(NnError::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "not a valid safetensors file: header length {n} for a {file_len}-byte file"
            ),
        });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let start = 8 + n;
    let mut buf = Vec::new();
    for e in parse_header(path, &header, file_len - start)? {
        f.seek(SeekFrom::Start(start + e.begin)).map_err(io)?;
        buf.resize((e.end - e.begin) as usize, 0);
        f.read_exact(&mut buf).map_err(io)?;
        let t = Tensor::f_from_data_size(&buf, &e.shape, e.kind)?;
        out.insert(e.name, t);
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
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| match e {
        // A failed write (a full disk) is the machine's failure, not bad input.
        safetensors::SafeTensorError::IoError(source) => NnError::Io {
            path: path.to_path_buf(),
            source,
        },
        e => NnError::Safetensors {
            path: path.to_path_buf(),
            message: format!("cannot write: {e}"),
        },
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
