//! Streaming, sharded safetensors writer: the layout transformers' `save_pretrained` makes
//! (`model.safetensors`, or `model-0000k-of-0000n.safetensors` shards with
//! `model.safetensors.index.json`), written one tensor at a time so that memory never
//! holds more than one converted tensor beside the model itself.
//!
//! File format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
//! length, a JSON header (`__metadata__` and, per tensor, dtype, shape and data_offsets
//! relative to the data section), padded with spaces to a multiple of 8, then the raw
//! little-endian bytes of the tensors back to back in header order.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

/// Parses a shard size such as `2GB`, `500MB`, `64KiB` or `1000000` (bytes). Decimal units
/// (KB, MB, GB) are powers of 1000 and binary ones (KiB, MiB, GiB) of 1024, as transformers.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("size {text:?}: expected a number with a unit, e.g. 2GB"))?;
    let factor: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("size {text:?}: unknown unit {other:?}; use B, KB, MB, GB, KiB, MiB or GiB"),
    };
    let bytes = value * factor;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        bail!("size {text:?} must be at least one byte");
    }
    Ok(bytes as u64)
}

/// safetensors dtype name and bytes per element of a kind.
fn dtype_of(kind: Kind) -> Result<(&'static str, usize)> {
    Ok(match kind {
        Kind::Float => ("F32", 4),
        Kind::BFloat16 => ("BF16", 2),
        Kind::Half => ("F16", 2),
        Kind::Double => ("F64", 8),
        Kind::Int64 => ("I64", 8),
        other => bail!("cannot write a tensor of kind {other:?}"),
    })
}

/// One tensor to write: its name, the source tensor and the kind to write it as.
pub struct Entry {
    pub name: String,
    pub tensor: Tensor,
    pub kind: Kind,
}

impl Entry {
    fn bytes(&self) -> Result<u64> {
        let (_, elt) = dtype_of(self.kind)?;
        Ok(self.tensor.numel() as u64 * elt as u64)
    }
}

/// Groups entries (in order) into shards of at most `max_bytes`; a tensor larger than the
/// limit gets a shard of its own.
pub fn plan(entries: &[Entry], max_bytes: u64) -> Result<Vec<Vec<usize>>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let b = e.bytes()?;
        if !current.is_empty() && size + b > max_bytes {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += b;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    Ok(shards)
}

/// File name of shard `k` (0-based) of `n`.
pub fn shard_name(k: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".into()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
    }
}

/// Writes one safetensors file with the given entries, converting and copying one tensor at
/// a time. Returns the bytes of tensor data written.
fn write_file(path: &Path, entries: &[&Entry]) -> Result<u64> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for e in entries {
        let (dtype, _) = dtype_of(e.kind)?;
        let n = e.bytes()?;
        header.insert(
            e.name.clone(),
            json!({"dtype": dtype, "shape": e.tensor.size(), "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut text = serde_json::to_string(&Value::Object(header))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    for e in entries {
        let t = e
            .tensor
            .detach()
            .to_device(Device::Cpu)
            .to_kind(e.kind)
            .contiguous();
        let numel = t.numel();
        buf.resize(e.bytes()? as usize, 0);
        t.f_copy_data_u8(&mut buf, numel)
            .with_context(|| format!("copying tensor {}", e.name))?;
        w.write_all(&buf)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    buf.clear();
    buf.shrink_to_fit();
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(offset)
}

/// Writes the entries into `dir` as one file or as shards with an index; returns the file
/// names written.
pub fn write_model(dir: &Path, entries: &[Entry], max_bytes: u64) -> Result<Vec<String>> {
    let shards = plan(entries, max_bytes)?;
    let n = shards.len();
    let mut names = Vec::with_capacity(n + 1);
    let mut weight_map = Map::new();
    let mut total = 0u64;
    for (k, idx) in shards.iter().enumerate() {
        let name = shard_name(k, n);
        let group: Vec<&Entry> = idx.iter().map(|&i| &entries[i]).collect();
        total += write_file(&dir.join(&name), &group)?;
        for e in &group {
            weight_map.insert(e.name.clone(), json!(name));
        }
        names.push(name);
    }
    if n > 1 {
        let params: i64 = entries.iter().map(|e| e.tensor.numel() as i64).sum();
        let index = json!({
            "metadata": {"total_size": total, "total_parameters": params},
            "weight_map": Value::Object(weight_map),
        });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        names.push("model.safetensors.index.json".into());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1.5kb").unwrap(), 1500);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    fn entry(name: &str, n: i64) -> Entry {
        Entry {
            name: name.into(),
            tensor: Tensor::arange(n, (Kind::Float, Device::Cpu)),
            kind: Kind::Float,
        }
    }

    #[test]
    fn plan_packs_in_order_and_isolates_big_tensors() {
        let e = vec![
            entry("a", 10),
            entry("b", 10),
            entry("c", 100),
            entry("d", 5),
        ];
        // 40 + 40 bytes fit in 100; 400 bytes alone; then 20.
        assert_eq!(plan(&e, 100).unwrap(), vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(plan(&e, 10_000).unwrap(), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn written_shards_read_back_with_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = vec![entry("x", 7), entry("y", 300)];
        e[1].kind = Kind::BFloat16;
        let names = write_model(dir.path(), &e, 100).unwrap();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let x = Tensor::read_safetensors(dir.path().join(&names[0])).unwrap();
        assert_eq!(x[0].0, "x");
        assert_eq!(x[0].1.kind(), Kind::Float);
        assert_eq!(
            Vec::<f32>::try_from(&x[0].1).unwrap(),
            (0..7).map(|v| v as f32).collect::<Vec<_>>()
        );
        let y = Tensor::read_safetensors(dir.path().join(&names[1])).unwrap();
        assert_eq!(y[0].1.kind(), Kind::BFloat16);
        assert_eq!(y[0].1.size(), vec![300]);
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&names[2])).unwrap())
                .unwrap();
        assert_eq!(index["weight_map"]["y"], names[1].as_str());
        assert_eq!(index["metadata"]["total_size"], 7 * 4 + 300 * 2);
    }
}
