//! Training checkpoints: a folder holding the trainable tensors (`trainable.safetensors`),
//! the optimiser state (`optimizer.safetensors`) and a JSON file (`checkpoint.json`) with
//! the step, the position in the data order, the RNG seed and stage-specific extras.
//! Written atomically (temporary sibling folder renamed into place), so a kill leaves
//! either the previous checkpoint or the new one, never a half-written folder.

use std::path::{Path, PathBuf};

use tch::Tensor;

pub use crate::error::{ensure_finite, ensure_finite_named};
use crate::error::{AlgoError, Result};

/// File with the trainable tensors.
pub const TENSORS_FILE: &str = "trainable.safetensors";
/// File with the optimiser state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File with the JSON metadata.
pub const META_FILE: &str = "checkpoint.json";
/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Where training stood when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Layout version (checked on load).
    pub format_version: u32,
    /// Optimiser steps (or minibatches) done.
    pub step: u64,
    /// Position in the data order (examples or minibatches consumed).
    pub data_position: u64,
    /// Seed of the run (the data order and dropout derive from it).
    pub seed: u64,
    /// Stage-specific state (metrics so far, controller state, flags to check on resume).
    pub extra: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata at `step` with no extras.
    pub fn new(step: u64, data_position: u64, seed: u64) -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            step,
            data_position,
            seed,
            extra: serde_json::Value::Null,
        }
    }
}

/// A loaded checkpoint (tensors on the CPU).
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
}

/// True when `dir` holds a finished checkpoint (after putting back one that a killed
/// replacement had moved aside, see `rlhf_core::atomic::recover`).
pub fn exists(dir: &Path) -> bool {
    let _ = rlhf_core::atomic::recover(dir);
    dir.join(META_FILE).is_file()
}

fn to_cpu(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect()
}

/// Writes named tensors to one safetensors file (detached, moved to the CPU), naming the
/// file on failure. Not atomic by itself: write into an atomic folder or temporary name.
pub fn write_named(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    Tensor::write_safetensors(&to_cpu(tensors), path)
        .map_err(|e| AlgoError::tch(format!("writing {}", path.display()), e))
}

/// Writes a checkpoint folder at `dir` atomically (replacing an older one).
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<PathBuf> {
    let out = rlhf_core::atomic::AtomicDir::new(dir)?;
    write_named(&out.path().join(TENSORS_FILE), tensors)?;
    write_named(&out.path().join(OPTIMIZER_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| AlgoError::BadState {
        path: dir.join(META_FILE),
        message: format!("cannot serialise checkpoint metadata: {e}"),
    })?;
    let meta_path = out.path().join(META_FILE);
    std::fs::write(&meta_path, json).map_err(|e| AlgoError::io("writing", &meta_path, e))?;
    Ok(out.commit()?)
}

/// Reads the metadata of the checkpoint at `dir`.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| AlgoError::io("reading", &path, e))?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| AlgoError::BadState {
        path: path.clone(),
        message: format!("not a checkpoint metadata file: {e}"),
    })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(AlgoError::BadState {
            path,
            message: format!(
                "checkpoint format version {} is not supported (expected {FORMAT_VERSION})",
                meta.format_version
            ),
        });
    }
    Ok(meta)
}

/// Reads a named-tensor safetensors file, naming the file on failure.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(AlgoError::BadState {
            path: path.to_path_buf(),
            message: "file is missing".into(),
        });
    }
    let mut list = Tensor::read_safetensors(path)
        .map_err(|e| AlgoError::tch(format!("reading {}", path.display()), e))?;
    list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(list)
}

/// Loads the checkpoint at `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let meta = load_meta(dir)?;
    Ok(Checkpoint {
        meta,
        tensors: read_tensors(&dir.join(TENSORS_FILE))?,
        optimizer: read_tensors(&dir.join(OPTIMIZER_FILE))?,
    })
}

/// Copies saved tensors into live parameters by name (under no-grad). Every parameter
/// must be present with its shape, and every saved tensor must have a parameter.
pub fn restore_into(params: &[(String, Tensor)], saved: &[(String, Tensor)]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    if params.len() != saved.len() {
        return Err(AlgoError::mismatch(
            "number of checkpointed tensors",
            params.len(),
            saved.len(),
        ));
    }
    for (name, p) in params {
        let src = saved
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                AlgoError::mismatch("checkpoint tensors", format!("a tensor `{name}`"), "none")
            })?;
        if src.size() != p.size() {
            return Err(AlgoError::mismatch(
                format!("shape of checkpointed tensor `{name}`"),
                format!("{:?}", p.size()),
                format!("{:?}", src.size()),
            ));
        }
        let mut dst = p.shallow_clone();
        dst.f_copy_(&src.to_kind(p.kind()).to_device(p.device()))
            .map_err(|e| AlgoError::tch(format!("restoring `{name}`"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, AdamWConfig};
    use tch::Kind;

    #[test]
    fn round_trip_restores_tensors_optimizer_and_meta() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("w".into(), w.shallow_clone())],
            AdamWConfig::default(),
        );
        (&w * &w).sum(Kind::Float).backward();
        opt.step(0.01);
        let mut meta = CheckpointMeta::new(1, 8, 42);
        meta.extra = serde_json::json!({"kl_coef": 0.05});
        save(
            &dir,
            &meta,
            &[("w".into(), w.shallow_clone())],
            &opt.state(),
        )
        .unwrap();
        assert!(exists(&dir));

        let w2 = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt2 = AdamW::new(
            vec![("w".into(), w2.shallow_clone())],
            AdamWConfig::default(),
        );
        let ck = load(&dir).unwrap();
        assert_eq!(ck.meta, meta);
        restore_into(&[("w".into(), w2.shallow_clone())], &ck.tensors).unwrap();
        opt2.load_state(&ck.optimizer).unwrap();
        assert_eq!(opt2.step_count(), 1);
        assert!(w2.detach().equal(&w.detach()));
        let st1 = opt.state();
        let st2 = opt2.state();
        for ((n1, t1), (n2, t2)) in st1.iter().zip(&st2) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
    }

    #[test]
    fn save_replaces_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let t = vec![("a".to_string(), Tensor::from_slice(&[1.0f32]))];
        save(&dir, &CheckpointMeta::new(1, 0, 0), &t, &[]).unwrap();
        save(&dir, &CheckpointMeta::new(2, 0, 0), &t, &[]).unwrap();
        assert_eq!(load_meta(&dir).unwrap().step, 2);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn restore_names_missing_and_misshapen_tensors() {
        let p = vec![(
            "a".to_string(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        )];
        let wrong = vec![(
            "a".to_string(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = restore_into(&p, &wrong).unwrap_err().to_string();
        assert!(
            e.contains("shape of checkpointed tensor `a`: expected [2], found [3]"),
            "{e}"
        );
        let other = vec![(
            "b".to_string(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = restore_into(&p, &other).unwrap_err().to_string();
        assert!(e.contains("a tensor `a`"), "{e}");
        let root = tempfile::tempdir().unwrap();
        let e = load(root.path()).unwrap_err().to_string();
        assert!(e.contains("checkpoint.json"), "{e}");
    }
}
