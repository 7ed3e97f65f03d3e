#!/usr/bin/env bash
# Installs the built binaries into a folder that can be moved or copied to other machines:
#   PREFIX/bin/<stage>            every stage binary of the workspace
#   PREFIX/lib/                   the libtorch libraries they load (found by the binaries'
#                                 run path $ORIGIN/../lib; no absolute path is compiled in)
#   PREFIX/share/perl-rlhf/       pipelines/ (run make -f pipelines/<name>.mk BIN=PREFIX/bin
#                                 from this folder), schemas/, scripts/timed.sh and the
#                                 bench reference scripts
# Usage: scripts/install.sh PREFIX [BIN]   (BIN: the build folder, default target/release)
# `make install PREFIX=...` builds first and runs this. Checks after copying that every
# installed binary resolves its libraries inside PREFIX, and says which one does not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
prefix=${1:?usage: scripts/install.sh PREFIX [BIN]}
bin=${2:-$root/target/release}
die() { echo "install: $*" >&2; exit 1; }

mkdir -p "$prefix/bin" "$prefix/lib" "$prefix/share/perl-rlhf/scripts"
prefix=$(cd "$prefix" && pwd -P)

# Every package with a src/main.rs builds a binary of the same name, and each
# src/bin/NAME/main.rs one named NAME (score-rewards-rm, which score-rewards hands reward
# models to).
names=()
for main in "$root"/crates/*/src/main.rs; do
  names+=("$(basename "$(dirname "$(dirname "$main")")")")
done
for main in "$root"/crates/*/src/bin/*/main.rs; do
  [ -e "$main" ] && names+=("$(basename "$(dirname "$main")")")
done
for name in "${names[@]}"; do
  [ -x "$bin/$name" ] || die "$bin/$name is missing (run \`make build\` first)"
  install -m 0755 "$bin/$name" "$prefix/bin/$name"
done

# The shared libraries the binaries load from outside the system folders: libtorch and
# what it needs (libc10, libgomp, the CUDA runtime stubs of the wheel). ldd lists the whole
# closure; libtorch finds its companions through its own $ORIGIN run path.
system_lib() { case "$1" in /lib/* | /lib64/* | /usr/lib/* | /usr/lib64/*) return 0 ;; esac; return 1; }
declare -A libs=()
for name in "${names[@]}"; do
  while read -r soname arrow path _; do
    [ "$arrow" = "=>" ] || continue
    [ "$path" = "not" ] && die "$bin/$name: $soname not found (is the build's libtorch link target/release/lib intact?)"
    system_lib "$path" || libs[$soname]=$path
  done < <(ldd "$bin/$name")
done
for soname in "${!libs[@]}"; do
  cp -L --preserve=mode "${libs[$soname]}" "$prefix/lib/$soname"
done
# A CUDA build (PERL_RLHF_CUDA=1) loads libtorch_cuda, which opens further CUDA libraries
# at run time (cuDNN's engines, NVRTC) that ldd does not list: take the wheel's whole set.
if [ -n "${libs[libtorch_cuda.so]:-}" ]; then
  for f in "$(dirname "${libs[libtorch_cuda.so]}")"/../../nvidia/*/lib/*.so*; do
    [ -f "$f" ] && cp -L --preserve=mode "$f" "$prefix/lib/"
  done
fi

rm -rf "$prefix/share/perl-rlhf/pipelines" "$prefix/share/perl-rlhf/schemas" "$prefix/share/perl-rlhf/scripts/bench"
cp -r "$root/pipelines" "$root/schemas" "$prefix/share/perl-rlhf/"
cp -r "$root/scripts/bench" "$prefix/share/perl-rlhf/scripts/bench"
cp "$root/scripts/timed.sh" "$prefix/share/perl-rlhf/scripts/timed.sh"

# Check: every installed binary resolves each non-system library inside PREFIX/lib.
for name in "${names[@]}"; do
  while read -r soname arrow path _; do
    [ "$arrow" = "=>" ] || continue
    [ "$path" = "not" ] && die "$prefix/bin/$name: $soname not found in $prefix/lib (looked there through the run path \$ORIGIN/../lib)"
    system_lib "$path" && continue
    path=$(realpath "$path")
    case "$path" in "$prefix/lib/"*) ;; *) die "$prefix/bin/$name: $soname resolves outside $prefix/lib: $path" ;; esac
  done < <(ldd "$prefix/bin/$name")
done
size=$(du -sh "$prefix" | cut -f1)
echo "install: ${#names[@]} binaries in $prefix/bin, ${#libs[@]} libraries in $prefix/lib ($size in all)" >&2
