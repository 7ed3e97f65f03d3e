//! Atomic outputs: files and folders are written beside their target under a temporary
//! name and renamed into place, so a killed stage leaves nothing that looks finished.
//!
//! - A temporary is `.NAME.tmp-PID@HOST` beside the target `NAME` (the host too, because
//!   tasks on other machines or in other PID namespaces may share a folder and a PID). It
//!   is registered with [`crate::signals`], which removes it when SIGTERM/SIGINT stops the
//!   process; the next run for the same target on the same host removes those of dead
//!   processes ([`sweep`]).
//! - Replacing an existing folder is one `renameat2(RENAME_EXCHANGE)` on Linux: at every
//!   instant the target is the old complete folder or the new one. Where the file system
//!   cannot exchange, the old folder is first moved to `.NAME.old-PID`, and [`recover`]
//!   (run before every write and before a checkpoint is read) moves it back if a kill
//!   struck between the two renames.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};
use crate::signals;

fn file_name(target: &Path) -> String {
    target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into())
}

fn sibling(target: &Path, name: String) -> PathBuf {
    match target.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

/// This machine's short host name, reduced to `[A-Za-z0-9_-]` (for temporary names).
pub fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let short: String = raw
            .trim()
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        if short.is_empty() {
            "host".into()
        } else {
            short
        }
    })
}

/// The temporary sibling of `target`: `.name.tmp-<pid>@<host>` in the same folder.
pub fn temp_sibling(target: &Path) -> PathBuf {
    sibling(
        target,
        format!(
            ".{}.tmp-{}@{}",
            file_name(target),
            std::process::id(),
            host()
        ),
    )
}

/// Creates the parent folder of `path` if needed.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| CoreError::io("creating folder", p, e))?;
    }
    Ok(())
}

/// True when process `pid` may still be running. Where that cannot be known (no /proc),
/// every process counts as running, so nothing of another process is ever removed.
fn maybe_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// The pid in a leftover of this host, named `.NAME.<kind>-<pid>[@<host>][.anything]` for
/// `kind` tmp or old (a name without a host is from an older version, taken as local).
fn leftover_pid(entry: &str, name: &str, kind: &str) -> Option<u32> {
    let rest = entry.strip_prefix(&format!(".{name}.{kind}-"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let mut tail = &rest[digits.len()..];
    if let Some(h) = tail.strip_prefix('@') {
        let end = h.find('.').unwrap_or(h.len());
        if &h[..end] != host() {
            return None;
        }
        tail = &h[end..];
    }
    if digits.is_empty() || !(tail.is_empty() || tail.starts_with('.')) {
        return None;
    }
    digits.parse().ok()
}

/// Puts back an old copy of `target` moved aside by a replacement that was killed before
/// the new copy was renamed in (only where the file system cannot exchange two names).
/// Returns true when it restored one.
pub fn recover(target: &Path) -> Result<bool> {
    if target.exists() {
        return Ok(false);
    }
    let name = file_name(target);
    let Some(parent) = target.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    }) else {
        return Ok(false);
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(false);
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let entry_name = entry.file_name().to_string_lossy().to_string();
        let old_pid = leftover_pid(&entry_name, &name, "old")
            .or_else(|| (entry_name == format!(".{name}.old")).then_some(0));
        if let Some(pid) = old_pid {
            if pid != 0 && maybe_alive(pid) {
                continue;
            }
            std::fs::rename(entry.path(), target)
                .map_err(|e| CoreError::io("restoring", target, e))?;
            tracing::warn!(
                target = %target.display(),
                "restored the previous copy a killed run had moved aside"
            );
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the temporaries that dead runs left for `target` (and restores an old copy a
/// killed replacement moved aside, see [`recover`]). Called before each write of `target`.
pub fn sweep(target: &Path) -> Result<()> {
    recover(target)?;
    let name = file_name(target);
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let entry_name = entry.file_name().to_string_lossy().to_string();
        let pid = leftover_pid(&entry_name, &name, "tmp")
            .or_else(|| leftover_pid(&entry_name, &name, "old"));
        if let Some(pid) = pid.filter(|&p| !maybe_alive(p)) {
            tracing::info!(path = %entry.path().display(), pid, "removing a dead run's temporary");
            signals::remove_path(&entry.path());
        }
    }
    Ok(())
}

/// Writes bytes to `target` atomically.
pub fn write_file(target: &Path, bytes: &[u8]) -> Result<()> {
    ensure_parent(target)?;
    sweep(target)?;
    let tmp = temp_sibling(target);
    signals::register_temporary(&tmp);
    let result = std::fs::write(&tmp, bytes)
        .map_err(|e| CoreError::io("writing", &tmp, e))
        .and_then(|()| {
            signals::renaming(|| {
                let r = std::fs::rename(&tmp, target)
                    .map_err(|e| CoreError::io("renaming into", target, e));
                if r.is_ok() {
                    signals::unregister_temporary(&tmp);
                }
                r
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    signals::unregister_temporary(&tmp);
    result
}

/// Swaps the names `a` and `b` in one step. Err when the system or file system cannot.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (a, b);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

/// Puts the finished folder `tmp` in place of `target`, replacing an older one so that a
/// kill at any instant leaves the old complete copy or the new one under `target`. The
/// renames run under [`signals::renaming`], so a signal never deletes a folder that is
/// changing names; on success `tmp` is no longer a registered temporary.
fn replace_dir(tmp: &Path, target: &Path) -> Result<()> {
    let old = signals::renaming(|| -> Result<Option<PathBuf>> {
        if !target.exists() {
            std::fs::rename(tmp, target).map_err(|e| CoreError::io("renaming into", target, e))?;
            signals::unregister_temporary(tmp);
            return Ok(None);
        }
        if exchange(tmp, target).is_ok() {
            // `tmp` now holds the old copy: no longer ours to protect or to clean on a signal.
            signals::unregister_temporary(tmp);
            return Ok(Some(tmp.to_path_buf()));
        }
        let old = sibling(
            target,
            format!(
                ".{}.old-{}@{}",
                file_name(target),
                std::process::id(),
                host()
            ),
        );
        std::fs::rename(target, &old).map_err(|e| CoreError::io("moving aside", target, e))?;
        std::fs::rename(tmp, target).map_err(|e| CoreError::io("renaming into", target, e))?;
        signals::unregister_temporary(tmp);
        Ok(Some(old))
    })?;
    // A kill before the old copy is gone leaves a leftover that the next run sweeps.
    if let Some(old) = old {
        signals::remove_path(&old);
    }
    Ok(())
}

/// Gives the owner-only files in `dir` (and its sub-folders) the mode of every other output
/// (0644): libtorch writes safetensors files as 0600, which other users of a shared
/// cluster folder could not read.
fn readable_by_all(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                readable_by_all(&entry.path());
            } else if meta.is_file() && meta.permissions().mode() & 0o777 == 0o600 {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A folder being written: files go into `path()`; `commit` puts it in place of the
/// target (replacing an older one); dropping it uncommitted deletes it.
#[derive(Debug)]
pub struct AtomicDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Starts a new folder for `target`, after sweeping dead runs' temporaries of it.
    pub fn new(target: &Path) -> Result<AtomicDir> {
        ensure_parent(target)?;
        sweep(target)?;
        let tmp = temp_sibling(target);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| CoreError::io("removing", &tmp, e))?;
        }
        signals::register_temporary(&tmp);
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

    /// Puts the finished folder in place of the target.
    pub fn commit(mut self) -> Result<PathBuf> {
        readable_by_all(&self.tmp);
        replace_dir(&self.tmp, &self.target)?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            signals::unregister_temporary(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

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
        assert_eq!(names(root.path()), ["adapter"]);
    }

    #[test]
    fn replacing_a_folder_is_one_exchange_on_linux() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "new").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("f"), "old").unwrap();
        if cfg!(target_os = "linux") {
            exchange(&a, &b).expect("renameat2(RENAME_EXCHANGE) on the test's file system");
            assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
            assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "old");
        }
    }

    #[test]
    fn sweep_removes_dead_runs_temporaries_only() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("rollouts.parquet");
        // pid 2^22 + 7 is above Linux's pid_max limit, so never alive.
        let dead = 4_194_311u32;
        let mine = std::process::id();
        std::fs::create_dir(root.path().join(format!(".rollouts.parquet.tmp-{dead}"))).unwrap();
        std::fs::write(
            root.path()
                .join(format!(".rollouts.parquet.tmp-{dead}.probe")),
            "",
        )
        .unwrap();
        std::fs::write(
            root.path().join(format!(".rollouts.parquet.tmp-{mine}")),
            "",
        )
        .unwrap();
        std::fs::write(root.path().join(format!(".other.parquet.tmp-{dead}")), "").unwrap();
        std::fs::write(root.path().join(".rollouts.parquet.tmp-x1"), "").unwrap();
        let here = format!(".rollouts.parquet.tmp-{dead}@{}", host());
        let elsewhere = format!(".rollouts.parquet.tmp-{dead}@another-host");
        std::fs::write(root.path().join(&here), "").unwrap();
        std::fs::write(root.path().join(&elsewhere), "").unwrap();
        sweep(&target).unwrap();
        let left = names(root.path());
        let mut want = vec![
            format!(".other.parquet.tmp-{dead}"),
            ".rollouts.parquet.tmp-x1".to_string(),
            format!(".rollouts.parquet.tmp-{mine}"),
            elsewhere,
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn recover_puts_back_a_copy_moved_aside_by_a_killed_replacement() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("ckpt");
        let old = root.path().join(".ckpt.old-4194311");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("checkpoint.json"), "{}").unwrap();
        assert!(recover(&target).unwrap());
        assert!(target.join("checkpoint.json").is_file());
        assert_eq!(names(root.path()), ["ckpt"]);
        // The pre-exchange layout's `.NAME.old` too.
        std::fs::rename(&target, root.path().join(".ckpt.old")).unwrap();
        let d = AtomicDir::new(&target).unwrap();
        assert!(target.join("checkpoint.json").is_file());
        drop(d);
        assert_eq!(names(root.path()), ["ckpt"]);
    }
}
