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
exec cargo "$@"
