#!/usr/bin/env bash
# Runs a pipeline stage and appends its wall time to a timings file (JSON lines), which
# the report turns into seconds per stage. Usage: timed.sh TIMINGS_FILE STAGE_NAME CMD...
# Timings are not artifacts: they are the one non-deterministic file of a run folder.
set -euo pipefail
timings=$1; stage=$2; shift 2
mkdir -p "$(dirname "$timings")"
start=$(date +%s.%N)
echo "[$stage] $*" >&2
"$@"
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
# Replace an earlier entry for the same stage (a rerun after a change).
if [ -f "$timings" ]; then
  grep -v "\"stage\": \"$stage\"" "$timings" > "$timings.tmp" || true
  mv "$timings.tmp" "$timings"
fi
printf '{"stage": "%s", "seconds": %s}\n' "$stage" "$secs" >> "$timings"
echo "[$stage] done in ${secs}s" >&2
