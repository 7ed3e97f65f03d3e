//! Makes the binaries find libtorch relative to themselves, with no absolute path of the
//! build machine compiled in. Shared by every crate that links libtorch
//! (`build = "../rlhf-nn/build.rs"`); each such crate depends on torch-sys directly to
//! receive DEP_TCH_LIBTORCH_LIB.
//!
//! - The run path is `$ORIGIN/lib:$ORIGIN/../lib`: a binary in `target/<profile>/` looks in
//!   `target/<profile>/lib`, a test binary in `target/<profile>/deps/` in the same folder,
//!   and an installed binary in `PREFIX/bin/` in `PREFIX/lib` (where `make install` copies
//!   the torch libraries).
//! - For builds in the work tree, this script links `target/<profile>/lib` to libtorch's
//!   folder (DEP_TCH_LIBTORCH_LIB, the project's Python environment). That one link is the
//!   only place the build machine's path lives; it is not inside any binary.
//! - With `PERL_RLHF_CUDA=1` at build time (the CUDA container recipe sets it), the binaries
//!   also load `libtorch_cuda.so`: the linker drops it otherwise, as no symbol of it is
//!   called directly, and libtorch then reports no CUDA device. CPU builds stay without it
//!   (it pulls in gigabytes of CUDA libraries at start-up and in `make install`). In the
//!   score-rewards package only `score-rewards-rm` and the tests get it: `score-rewards`
//!   itself links no libtorch.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=PERL_RLHF_CUDA");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib:$ORIGIN/../lib");
    if std::env::var("PERL_RLHF_CUDA").is_ok_and(|v| v == "1") {
        let arg = "-Wl,--no-as-needed,-ltorch_cuda,--as-needed";
        match std::env::var("CARGO_PKG_NAME").as_deref() {
            // score-rewards' own binary runs rule rewards without libtorch; only its
            // reward-model binary (and the tests, which use rlhf-nn) load it
            Ok("score-rewards") => {
                println!("cargo:rustc-link-arg-bin=score-rewards-rm={arg}");
                println!("cargo:rustc-link-arg-tests={arg}");
            }
            _ => println!("cargo:rustc-link-arg={arg}"),
        }
    }
    let Ok(libtorch) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    if let Err(e) = link(Path::new(&libtorch), &profile_dir.join("lib")) {
        println!(
            "cargo:warning=could not link {}/lib to libtorch: {e}",
            profile_dir.display()
        );
    }
}

/// Points `link` at `target`, atomically (several build scripts run at once).
fn link(target: &Path, link: &Path) -> std::io::Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}
