//! Atomic outputs: files and folders are written beside their target under a temporary
//! name and renamed into place, so a killed stage leaves nothing that looks finished.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// The temporary sibling of `target`: `.name.tmp-<pid>` in the same folder.
pub fn temp_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    match target.parent() {
        Some(p) => p.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Creates the parent folder of `path` if needed.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| CoreError::io("creating folder", p, e))?;
    }
    Ok(())
}

/// Writes bytes to `target` atomically.
pub fn write_file(target: &Path, bytes: &[u8]) -> Result<()> {
    ensure_parent(target)?;
    let tmp = temp_sibling(target);
    std::fs::write(&tmp, bytes).map_err(|e| CoreError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, target).map_err(|e| CoreError::io("renaming into", target, e))
}

/// A folder being written: files go into `path()`; `commit` renames it onto the target
/// (replacing an older one); dropping it uncommitted deletes it.
#[derive(Debug)]
pub struct AtomicDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Starts a new folder for `target`.
    pub fn new(target: &Path) -> Result<AtomicDir> {
        ensure_parent(target)?;
        let tmp = temp_sibling(target);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| CoreError::io("removing", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| CoreError::io("creating folder", &tmp, e))?;
        Ok(AtomicDir {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the finished folder onto the target.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = temp_sibling(&self.target).with_extension("old");
            if old.exists() {
                let _ = std::fs::remove_dir_all(&old);
            }
            std::fs::rename(&self.target, &old)
                .map_err(|e| CoreError::io("moving aside", &self.target, e))?;
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| CoreError::io("renaming into", &self.target, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| CoreError::io("renaming into", &self.target, e))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_dir_leaves_nothing_and_commit_replaces() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("adapter");
        {
            let d = AtomicDir::new(&target).unwrap();
            std::fs::write(d.path().join("a.txt"), "x").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        for content in ["one", "two"] {
            let d = AtomicDir::new(&target).unwrap();
            std::fs::write(d.path().join("a.txt"), content).unwrap();
            d.commit().unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "two"
        );
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
