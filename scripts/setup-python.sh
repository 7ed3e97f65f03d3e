#!/usr/bin/env bash
# Creates (once) the project's Python environment with torch and the reference stack, in a
# cache outside the work tree keyed by the hash of scripts/requirements.txt, so clean clones
# reuse it, then the test tools of scripts/requirements-tools.txt into it (a marker of their
# own). Prints the environment's path on stdout. Safe to run concurrently: the env is
# built under a temporary name and only marked complete at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req="$here/requirements.txt"
key=$(sha256sum "$req" | cut -c1-12)
cache="${PERL_RLHF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perl-rlhf}"
env_dir="$cache/pyenv-$key"
tools="$here/requirements-tools.txt"
tools_mark="$env_dir/.tools-$(sha256sum "$tools" | cut -c1-12)"
if [ -f "$env_dir/.complete" ] && [ -f "$tools_mark" ]; then
  echo "$env_dir"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/pyenv-$key.lock"
flock 9
if [ ! -f "$env_dir/.complete" ]; then
  echo "setup: creating Python environment $env_dir (torch 2.11.0 is ~4.7 GB; first time only)" >&2
  rm -rf "$env_dir"
  python3 -m venv "$env_dir"
  "$env_dir/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$env_dir/.complete"
fi
if [ ! -f "$tools_mark" ]; then
  echo "setup: installing the test tools of $tools into $env_dir" >&2
  "$env_dir/bin/pip" install --quiet --disable-pip-version-check -c "$req" -r "$tools" >&2
  touch "$tools_mark"
fi
echo "$env_dir"
