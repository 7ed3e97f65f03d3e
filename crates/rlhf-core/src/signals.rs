//! SIGTERM and SIGINT (Slurm preemption, Kubernetes eviction, Ctrl-C): one place decides
//! what a stage does when asked to stop.
//!
//! [`install`] (called by `GlobalArgs::init`) starts a watcher thread. By default a signal
//! stops the process at once: the temporaries of outputs being written (registered by
//! [`crate::atomic`] and the Parquet writer) are removed and the process exits with
//! 128 + the signal (130 for SIGINT, 143 for SIGTERM). Nothing half-written is left, and a
//! complete output is never touched: replacing one is a single exchange, see `atomic`.
//!
//! Trainers stop at a safe point instead: while a [`Cooperative`] guard is alive, a signal
//! only raises a flag that the step loop polls with [`pending`]; the loop writes its
//! checkpoint and returns [`interrupted_error`], which `cli::finish` maps to the same exit
//! code. A second signal while waiting stops the process at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::CoreError;

/// The signal received (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Live [`Cooperative`] guards.
static COOPERATIVE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Held while a temporary becomes an output (its rename or exchange and its unregistering),
/// and taken for good by [`stop_now`]: the watcher never deletes a path that is being, or
/// has just been, renamed into place.
static RENAMING: Mutex<()> = Mutex::new(());

/// Runs `f` (a rename of a temporary into place, then its unregistering) so that a signal
/// cannot remove the temporary half-way: a stop waits for it to finish.
pub fn renaming<T>(f: impl FnOnce() -> T) -> T {
    let _guard = RENAMING.lock().unwrap_or_else(|p| p.into_inner());
    f()
}

fn temporaries() -> &'static Mutex<BTreeSet<PathBuf>> {
    static TEMPS: OnceLock<Mutex<BTreeSet<PathBuf>>> = OnceLock::new();
    TEMPS.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// The exit code for a stop by `signal`: 128 + its number (130 SIGINT, 143 SIGTERM).
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// The signal's name for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Starts the watcher thread for SIGTERM and SIGINT (once per process; later calls do
/// nothing). A failure to install is logged, and the default handling stays.
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM/SIGINT ({e}); they will kill the process");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let first = RECEIVED
                    .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                if first && COOPERATIVE.load(Ordering::SeqCst) > 0 {
                    eprintln!(
                        "{}: stopping at the next safe point (after a checkpoint); \
                         send it again to stop at once",
                        name(signal)
                    );
                    continue;
                }
                stop_now(signal);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the signal watcher ({e}); signals will kill the process");
    }
}

/// Removes every registered temporary and exits with the signal's code.
fn stop_now(signal: i32) -> ! {
    // Wait for a rename in progress, and hold the lock until the process ends.
    let _renames = RENAMING.lock().unwrap_or_else(|p| p.into_inner());
    let temps: Vec<PathBuf> = match temporaries().lock() {
        Ok(t) => t.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
    };
    for t in temps {
        remove_path(&t);
    }
    eprintln!("{}: stopped; partial outputs removed", name(signal));
    // _exit, not exit: the main thread may be inside libtorch, whose static destructors
    // (run by exit) would then crash.
    signal_hook::low_level::exit(i32::from(exit_code(signal)));
}

/// Removes a file or a folder, ignoring errors (it may be gone already).
pub(crate) fn remove_path(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Registers a temporary file or folder to remove if a signal stops the process.
pub fn register_temporary(path: &Path) {
    if let Ok(mut t) = temporaries().lock() {
        t.insert(path.to_path_buf());
    }
}

/// Forgets a temporary (renamed into place, or removed).
pub fn unregister_temporary(path: &Path) {
    if let Ok(mut t) = temporaries().lock() {
        t.remove(path);
    }
}

/// The signal received so far, if any (SIGTERM or SIGINT).
pub fn pending() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The error a stage returns after stopping at a safe point for `signal`.
pub fn interrupted_error(signal: i32, what: impl Into<String>) -> CoreError {
    CoreError::Interrupted {
        signal,
        what: what.into(),
    }
}

/// While alive, signals are left to the code that polls [`pending`] (a trainer's step loop).
#[derive(Debug)]
pub struct Cooperative(());

impl Cooperative {
    /// Starts cooperative handling; a signal that arrived before stops the process now.
    pub fn begin() -> Cooperative {
        COOPERATIVE.fetch_add(1, Ordering::SeqCst);
        Cooperative(())
    }
}

impl Cooperative {
    /// Ends cooperative handling (the loop that polled [`pending`] is done): a signal that
    /// arrived meanwhile stops the process now, as would one arriving later.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Cooperative {
    fn drop(&mut self) {
        if COOPERATIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(signal) = pending() {
                stop_now(signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(signal_hook::consts::SIGINT), 130);
        assert_eq!(exit_code(signal_hook::consts::SIGTERM), 143);
    }

    #[test]
    fn temporaries_are_tracked_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".x.tmp-1");
        register_temporary(&p);
        assert!(temporaries().lock().unwrap().contains(&p));
        unregister_temporary(&p);
        assert!(!temporaries().lock().unwrap().contains(&p));
    }
}
