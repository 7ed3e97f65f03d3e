//! Content hashes: stable row ids, file and folder hashes for lineage, and the
//! deterministic train/eval split.

use std::path::Path;

use crate::error::{CoreError, Result};

/// A stable id (16 hex chars) from content parts; parts are length-prefixed so that
/// ("ab", "c") and ("a", "bc") differ.
pub fn content_id(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Bytes of a file read and hashed at a time: blake3 hashes a large update on every thread
/// with its widest SIMD path ([`update_large`]), where `io::copy`'s 8 KiB pieces got one thread
/// and half the lanes.
const FILE_CHUNK: usize = 1 << 22;

/// Adds `bytes` to `h`, on rayon's threads when there are enough of them to pay (the same
/// hash either way).
pub fn update_large(h: &mut blake3::Hasher, bytes: &[u8]) {
    // blake3's documentation: below about 128 KiB one thread is faster
    if bytes.len() >= 1 << 17 {
        h.update_rayon(bytes);
    } else {
        h.update(bytes);
    }
}

/// blake3 of a file's bytes (hex, 64 chars).
pub fn file_hash(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut h = blake3::Hasher::new();
    let mut file = std::fs::File::open(path).map_err(|e| CoreError::io("opening", path, e))?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut buf = vec![0u8; len.clamp(1, FILE_CHUNK)];
    loop {
        // fill the buffer (a read may return less), so each update is a large one
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CoreError::io("hashing", path, e)),
            }
        }
        if filled == 0 {
            break;
        }
        update_large(&mut h, &buf[..filled]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// blake3 over the sorted (name, file hash) pairs of a folder's regular files (not
/// recursive; dot-files and our training-state files are skipped).
pub fn dir_hash(dir: &Path) -> Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| CoreError::io("listing", dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for n in names {
        let fh = file_hash(&dir.join(&n))?;
        h.update(n.as_bytes());
        h.update(fh.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// A number in [0, 1) derived from a string, the same on every machine.
pub fn unit_interval(key: &str) -> f64 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Deterministic split by hash: "eval" for about `eval_fraction` of ids, else "train".
pub fn split_for(id: &str, eval_fraction: f64) -> &'static str {
    split_salted(id, "split", eval_fraction)
}

/// Like [`split_for`] with another salt, for a split nested inside an earlier one: rows
/// that `split_for` put in "train" are then spread over both splits again (the same salt
/// would put every one of them back in "train").
pub fn split_salted(id: &str, salt: &str, eval_fraction: f64) -> &'static str {
    if unit_interval(&format!("{salt}:{id}")) < eval_fraction {
        "eval"
    } else {
        "train"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's hash is blake3 of its bytes at any size: empty, under the threaded size,
    /// several chunks with a short last one.
    #[test]
    fn file_hash_is_blake3_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1000, (1 << 17) + 3, 2 * FILE_CHUNK + 12_345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &bytes).unwrap();
            let want = blake3::hash(&bytes).to_hex().to_string();
            assert_eq!(file_hash(&path).unwrap(), want, "{len} bytes");
            let mut h = blake3::Hasher::new();
            update_large(&mut h, &bytes);
            assert_eq!(h.finalize().to_hex().to_string(), want, "{len} bytes");
        }
    }

    #[test]
    fn ids_are_stable_and_boundary_aware() {
        assert_eq!(content_id(&["a", "b"]), content_id(&["a", "b"]));
        assert_ne!(content_id(&["ab", "c"]), content_id(&["a", "bc"]));
        assert_eq!(content_id(&["x"]).len(), 16);
    }

    #[test]
    fn split_fraction_is_respected() {
        let n = 20_000;
        let eval = (0..n)
            .filter(|i| split_for(&i.to_string(), 0.1) == "eval")
            .count();
        let frac = eval as f64 / n as f64;
        assert!((frac - 0.1).abs() < 0.01, "eval fraction {frac}");
        assert_eq!(split_for("abc", 0.0), "train");
        assert_eq!(split_for("abc", 1.0), "eval");
    }

    #[test]
    fn a_salted_split_reaches_rows_an_earlier_split_kept_in_train() {
        let train: Vec<String> = (0..2000)
            .map(|i| i.to_string())
            .filter(|id| split_for(id, 0.1) == "train")
            .collect();
        let same = train
            .iter()
            .filter(|id| split_for(id, 0.1) == "eval")
            .count();
        let salted = train
            .iter()
            .filter(|id| split_salted(id, "pairs", 0.1) == "eval")
            .count();
        assert_eq!(same, 0);
        let frac = salted as f64 / train.len() as f64;
        assert!((frac - 0.1).abs() < 0.03, "salted eval fraction {frac}");
    }
}
