//! Embeds libtorch's library folder as an rpath so binaries and tests run without
//! LD_LIBRARY_PATH. Shared by every crate that links libtorch (`build = "../rlhf-nn/build.rs"`);
//! each such crate depends on torch-sys directly to receive DEP_TCH_LIBTORCH_LIB.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
