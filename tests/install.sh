#!/usr/bin/env bash
# `make install` output is relocatable (part of `make test`). The container recipes
# (scripts/container/) build with scripts/install.sh; no container runtime runs on the
# machines the tests run on, so this runs the CPU recipe's build step on the host and then
# checks what the image would carry:
#  1. install into a temporary PREFIX, then move the whole folder elsewhere;
#  2. every installed binary resolves its libraries inside the moved PREFIX/lib (ldd) and
#     names no path of this machine (strings: the work tree, the cargo home, the Python
#     environment, the first PREFIX);
#  3. every binary runs --help from there with a bare environment, and the micro demo
#     pipeline (the installed share/perl-rlhf/pipelines) runs on the installed binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
env_dir=$(scripts/setup-python.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install test FAILED: $*" >&2; exit 1; }

# the build step of the container recipe, as it is written there, into a temporary PREFIX
first=$tmp/first-prefix
step=$(grep -m1 '^RUN make build' scripts/container/Dockerfile) || fail "no build step in scripts/container/Dockerfile"
step=${step#RUN }
echo "install: running the container recipe's build step: $step" >&2
bash -c "${step//\/opt\/perl-rlhf/$first}"
mkdir -p "$tmp/elsewhere"
moved=$(realpath "$tmp/elsewhere")/perl-rlhf
mv "$first" "$moved"

n=0
for b in "$moved"/bin/*; do
  n=$((n + 1))
  if ldd "$b" | grep -q "not found"; then
    ldd "$b" >&2
    fail "$b: a library is not found after the move"
  fi
  outside=$(ldd "$b" | awk '$2 == "=>" {print $3}' | grep -v -E "^(/lib|/lib64|/usr/lib|/usr/lib64)/" |
    xargs -r realpath | grep -v "^$moved/lib/" || true)
  [ -z "$outside" ] || fail "$b loads libraries from outside $moved/lib: $outside"
  for p in "$root" "${CARGO_HOME:-$HOME/.cargo}" "$env_dir" "$first"; do
    if strings -n 6 "$b" | grep -q -F "$p"; then
      strings -n 6 "$b" | grep -F "$p" | head -3 >&2
      fail "$b names a path of this machine: $p"
    fi
  done
  env -i PATH=/usr/bin:/bin "$b" --help >/dev/null || fail "$b --help from the moved folder"
done
[ "$n" -ge 10 ] || fail "only $n binaries installed"
echo "install: $n binaries resolve inside the moved folder, name no build path, run --help" >&2

# the micro demo on the installed binaries and pipelines, from a folder that is not the tree
work=$tmp/work
mkdir -p "$work"
cp -r tests/e2e/demo "$work/conf"
(cd "$moved/share/perl-rlhf" && env -u LD_LIBRARY_PATH make --no-print-directory -f pipelines/demo.mk \
  BIN="$moved/bin" RUN="$work/run" CONF="$work/conf" ITERATIONS=1 THREADS=2 >"$work/demo.log" 2>&1) ||
  { tail -40 "$work/demo.log" >&2; fail "the micro demo on the installed binaries"; }
[ -f "$work/run/report/summary.json" ] || fail "the installed demo wrote no report"
echo "install: the micro demo ran on the installed binaries (report in its run folder)" >&2
