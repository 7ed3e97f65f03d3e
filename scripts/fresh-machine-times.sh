#!/usr/bin/env bash
# What a newcomer's two commands cost on this machine, as on a fresh one: clones the
# repository into WORKDIR and runs `make demo` then `make test` with an empty Python
# environment cache (PERL_RLHF_CACHE, no pip cache: torch and the rest are downloaded and
# installed again), an empty Cargo registry (CARGO_HOME: every crate downloaded again) and an
# empty target/. Prints each command's wall time; logs in WORKDIR. Needs network access to
# PyPI and crates.io and about 20 GB in WORKDIR.
#
# Usage: scripts/fresh-machine-times.sh WORKDIR [REPO (default: this checkout)]
set -euo pipefail
work=${1:?usage: fresh-machine-times.sh WORKDIR [REPO]}
repo=${2:-$(cd "$(dirname "$0")/.." && pwd)}
if [ -e "$work" ]; then echo "$work exists: give a new folder" >&2; exit 2; fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
export PERL_RLHF_CACHE=$work/cache CARGO_HOME=$work/cargo PIP_NO_CACHE_DIR=1
export PATH=$HOME/.cargo/bin:$PATH  # rustup's cargo and rustc; only the registry is fresh
git clone -q "$repo" "$work/repo"
cd "$work/repo"
for target in demo test; do
  start=$(date +%s)
  if make "$target" > "$work/$target.log" 2>&1; then rc=0; else rc=$?; fi
  echo "make $target: exit $rc, $(( $(date +%s) - start )) s (log: $work/$target.log)"
  [ "$rc" = 0 ] || exit "$rc"
done
