#!/usr/bin/env bash
# Runs cargo against the project's Python environment (torch 2.11.0 for tch =0.24.0).
# Every build goes through here so that the environment torch-sys sees never changes
# (a change would rebuild libtorch's C++ glue). Usage: scripts/cargo.sh build --release ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
env_dir=$("$here/setup-python.sh")
export VIRTUAL_ENV="$env_dir"
export PATH="$env_dir/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH LD_LIBRARY_PATH
# No path of this machine inside a binary (so `make install` output can be moved anywhere):
# Rust panic locations and the C/C++ of dependencies (torch-sys's glue includes libtorch's
# headers) name the cargo registry and the Python environment by neutral prefixes.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
repo=$(cd "$here/.." && pwd)
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$repo=/perl-rlhf"
prefix_maps="-ffile-prefix-map=$env_dir=/pyenv -ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$repo=/perl-rlhf"
export CFLAGS="${CFLAGS:+$CFLAGS }$prefix_maps"
export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$prefix_maps"
exec cargo "$@"
