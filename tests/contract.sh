#!/usr/bin/env bash
# The stage contract, case by case (called by tests/e2e.sh on its micro demo run; also
# runnable by hand: tests/contract.sh RUN_DIR [BIN] [PYTHON]):
#  - exit codes: 2 every usage error (clap's or found later), 3 bad input (corrupt or
#    truncated files, incomplete or mixed part folders, wrong adapter kind or base),
#    143 after SIGTERM;
#  - an output never overwrites an input (the input is byte-identical afterwards);
#  - part folders: complete or refused; Slurm arrays numbered from 1 give every shard;
#  - signals: SIGTERM leaves no temporary, a trainer's checkpoint resumes to the same bytes;
#  - temporaries of dead runs are swept by the next run of the same target;
#  - ids come from content: the same adapter in another folder gives the same rollout ids;
#  - --summary-json: one shape in every stage, nothing else on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(cd "$1" && pwd)
BIN=${2:-$PWD/target/release}
PY=${3:-${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}}
tmp=$(mktemp -d)
trap 'umount "$tmp/full" 2>/dev/null || true; rm -rf "$tmp"' EXIT
fails=0
g=(-q --no-progress --threads 2)

# expect CODE NAME -- COMMAND...: runs COMMAND, checks its exit code (stderr kept on failure).
expect() {
  local want=$1 name=$2
  shift 3
  local got=0
  "$@" >"$tmp/out" 2>"$tmp/err" || got=$?
  if [ "$got" = "$want" ]; then
    echo "contract: ok   $name (exit $got)" >&2
  else
    echo "contract: FAIL $name: exit $got, expected $want" >&2
    sed 's/^/    /' "$tmp/err" | tail -8 >&2
    fails=$((fails + 1))
  fi
}
# stderr of the last `expect` must contain TEXT.
says() {
  if grep -qF -- "$1" "$tmp/err"; then :; else
    echo "contract: FAIL stderr lacks \"$1\":" >&2
    sed 's/^/    /' "$tmp/err" | tail -8 >&2
    fails=$((fails + 1))
  fi
}
check() { # check NAME COMMAND...: a plain assertion
  local name=$1
  shift
  if "$@"; then echo "contract: ok   $name" >&2; else
    echo "contract: FAIL $name" >&2
    fails=$((fails + 1))
  fi
}
tree_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
no_temporaries() {
  local left
  left=$(find "$@" -name '.*.tmp-*' 2>/dev/null)
  [ -z "$left" ] || { echo "    left: $left" >&2; return 1; }
}

sft=$run/sft rm=$run/rm pol=$run/iter-002/policy
prompts=$run/data/prompts.parquet r1=$run/iter-001/rollouts.parquet s1=$run/iter-001/scores.parquet
base_sample=("$BIN/sample-rollouts" "${g[@]}" --model "$sft" --prompts "$prompts")
sample=("${base_sample[@]}" --max-prompts 6 --samples-per-prompt 2 --max-new-tokens 8)

# --- usage errors: clap's and those found after parsing -> 2 ---------------------------
for stage in prep-data init-model train-sft train-rm-lora sample-rollouts score-rewards \
             ppo-update merge-adapter report; do
  expect 2 "$stage --no-such-flag" -- "$BIN/$stage" --no-such-flag
done
expect 2 "sample-rollouts --shard-index 5 --num-shards 2" -- "${sample[@]}" --shard-index 5 --num-shards 2 --out "$tmp/x"
expect 2 "sample-rollouts --samples-per-prompt 0" -- "${base_sample[@]}" --samples-per-prompt 0 --out "$tmp/x.parquet"
expect 2 "score-rewards with nothing to score" -- "$BIN/score-rewards" "${g[@]}" --rollouts "$r1" --out "$tmp/s.parquet"
expect 2 "prep-data pairs --label-noise 2" -- "$BIN/prep-data" "${g[@]}" pairs --rollouts "$r1" --scores "$s1" --label-noise 2 --out "$tmp/p.parquet"
expect 2 "train-sft --batch-size 0" -- "$BIN/train-sft" "${g[@]}" --model "$sft" --data "$run/data/sft.parquet" --batch-size 0 --out "$tmp/sft"

# --- an output never overwrites an input -> 2, input unchanged --------------------------
before=$(tree_hash "$run")
expect 2 "ppo-update --out = --model" -- "$BIN/ppo-update" "${g[@]}" --model "$sft" --rollouts "$r1" --scores "$s1" --out "$sft"
says "is the same path as --model"
expect 2 "train-rm-lora --out = --model" -- "$BIN/train-rm-lora" "${g[@]}" --model "$sft" --preferences "$run/data/preferences.parquet" --out "$sft"
expect 2 "train-sft --out inside --model" -- "$BIN/train-sft" "${g[@]}" --model "$sft" --data "$run/data/sft.parquet" --out "$sft/sub"
says "lies inside --model"
expect 2 "score-rewards --out = --rollouts" -- "$BIN/score-rewards" "${g[@]}" --rollouts "$r1" --rule gold --out "$r1"
expect 2 "score-rewards --out = --rollouts via ./.." -- "$BIN/score-rewards" "${g[@]}" --rollouts "$r1" --rule gold --out "$run/iter-001/../iter-001/./rollouts.parquet"
expect 2 "sample-rollouts --out = --prompts" -- "${sample[@]}" --out "$prompts"
expect 2 "prep-data pairs --out = --rollouts" -- "$BIN/prep-data" "${g[@]}" pairs --rollouts "$r1" --scores "$s1" --out "$r1"
expect 2 "merge-adapter --out above --adapter" -- "$BIN/merge-adapter" "${g[@]}" --model "$sft" --adapter "$pol" --out "$run/iter-002"
says "contains --adapter"
expect 2 "report --out-dir = --run-dir" -- "$BIN/report" "${g[@]}" --run-dir "$run" --out-dir "$run"
expect 2 "report --out-dir above --run-dir" -- "$BIN/report" "${g[@]}" --run-dir "$run" --out-dir "$(dirname "$run")"
expect 2 "report --out-dir = another stage's folder" -- "$BIN/report" "${g[@]}" --run-dir "$run" --out-dir "$rm"
says "not a report"
check "every input of the run is byte-identical afterwards" [ "$(tree_hash "$run")" = "$before" ]

# --- --summary-json: one shape in every stage; stdout carries nothing else ---------------
S=$tmp/sum
mkdir -p "$S"
summary_of() { # summary_of STAGE COMMAND...: runs COMMAND --summary-json -, checks the shape
  local stage=$1
  shift
  if ! "$@" --summary-json - >"$S/$stage.json" 2>"$S/$stage.err"; then
    echo "contract: FAIL $stage --summary-json -: exit $?" >&2; tail -5 "$S/$stage.err" >&2
    fails=$((fails + 1)); return
  fi
  "$PY" - "$stage" "$S/$stage.json" <<'PYEOF' || { echo "contract: FAIL $stage summary shape" >&2; fails=$((fails + 1)); }
import json, sys
stage, path = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines()
assert len(lines) == 1, f"stdout holds {len(lines)} lines, expected the summary alone"
s = json.loads(lines[0])
assert list(s) == ["stage", "version", "outputs", "seconds", "metrics", "details"], list(s)
assert s["stage"] == stage and s["outputs"] and s["seconds"] >= 0, s
for o in s["outputs"]:
    assert set(o) == {"path", "rows"}, o
print(f"contract: ok   {stage} --summary-json - ({len(s['outputs'])} output(s), metrics {sorted(s['metrics'])})", file=sys.stderr)
PYEOF
}
summary_of prep-data "$BIN/prep-data" "${g[@]}" synthetic --num-prompts 8 --out-dir "$S/data"
summary_of init-model "$BIN/init-model" "${g[@]}" --text-file "$S/data/sft.parquet" --text-column prompt --text-column completion --arch llama --preset tiny --vocab-size 300 --out "$S/model"
summary_of train-sft "$BIN/train-sft" "${g[@]}" --model "$S/model" --data "$S/data/sft.parquet" --max-steps 2 --batch-size 4 --out "$S/sft"
summary_of sample-rollouts "${sample[@]}" --out "$S/r.parquet"
summary_of score-rewards "$BIN/score-rewards" "${g[@]}" --rollouts "$S/r.parquet" --rule gold --out "$S/s.parquet"
summary_of train-rm-lora "$BIN/train-rm-lora" "${g[@]}" --model "$sft" --preferences "$run/data/preferences.parquet" --max-steps 2 --lora-rank 4 --out "$S/rm"
summary_of ppo-update "$BIN/ppo-update" "${g[@]}" --model "$sft" --rollouts "$r1" --scores "$s1" --minibatch-size 8 --out "$S/pol"
summary_of merge-adapter "$BIN/merge-adapter" "${g[@]}" --model "$sft" --adapter "$pol" --out "$S/merged"
summary_of report "$BIN/report" "${g[@]}" --run-dir "$run" --out-dir "$S/report"
"$BIN/ppo-update" "${g[@]}" --model "$sft" --rollouts "$r1" --scores "$s1" --minibatch-size 8 --out "$S/pol2" >"$S/plain.out"
check "without --summary-json a stage prints nothing on stdout" [ ! -s "$S/plain.out" ]
"$BIN/score-rewards" "${g[@]}" --rollouts "$S/r.parquet" --rule gold --out "$S/s2.parquet" --summary-json "$S/s2.json"
check "--summary-json FILE writes the file" "$PY" -c "import json,sys; assert json.load(open(sys.argv[1]))['outputs'][0]['rows'] > 0" "$S/s2.json"

# --- bad input -> 3 ----------------------------------------------------------------------
head -c 300 "$r1" >"$tmp/truncated.parquet"
expect 3 "score-rewards on a truncated Parquet file" -- "$BIN/score-rewards" "${g[@]}" --rollouts "$tmp/truncated.parquet" --rule gold --out "$tmp/s.parquet"
expect 3 "ppo-update on truncated scores" -- "$BIN/ppo-update" "${g[@]}" --model "$sft" --rollouts "$r1" --scores "$tmp/truncated.parquet" --out "$tmp/pol"
expect 3 "prep-data pairs on a truncated file" -- "$BIN/prep-data" "${g[@]}" pairs --rollouts "$tmp/truncated.parquet" --scores "$s1" --out "$tmp/p.parquet"
expect 3 "sample-rollouts with a reward adapter as the policy" -- "${sample[@]}" --adapter "$rm" --out "$tmp/x.parquet"
says "needs a policy adapter"
expect 3 "sample-rollouts with a policy adapter of another base" -- "$BIN/sample-rollouts" "${g[@]}" --model "$run/final/merged" --adapter "$pol" --prompts "$prompts" --max-prompts 2 --out "$tmp/x.parquet"
says "base model mismatch"
expect 3 "score-rewards with a policy adapter as the reward model" -- "$BIN/score-rewards" "${g[@]}" --model "$sft" --reward-model "$pol" --rollouts "$r1" --out "$tmp/x.parquet"
says "needs a reward adapter"

# --- a full disk is a failure (1: retrying elsewhere may help), never "bad input" (3) ----
mkdir -p "$tmp/full"
if mount -t tmpfs -o size=200k tmpfs "$tmp/full" 2>/dev/null; then
  expect 1 "train-sft onto a full disk" -- "$BIN/train-sft" "${g[@]}" --model "$run/model" --data "$run/data/sft.parquet" --max-steps 2 --batch-size 4 --out "$tmp/full/sft"
  says "No space left on device"
  expect 1 "init-model onto a full disk" -- "$BIN/init-model" "${g[@]}" --text-file "$run/data/sft.parquet" --text-column prompt --text-column completion --arch llama --preset tiny --vocab-size 300 --out "$tmp/full/model"
  expect 1 "train-rm-lora onto a full disk" -- "$BIN/train-rm-lora" "${g[@]}" --model "$sft" --preferences "$run/data/preferences.parquet" --max-steps 2 --lora-rank 64 --lora-targets all-linear --out "$tmp/full/rm"
  head -c 190000 /dev/zero >"$tmp/full/filler"
  expect 1 "sample-rollouts onto a full disk" -- "${base_sample[@]}" --out "$tmp/full/r.parquet"
  rm -f "$tmp/full/filler"
  check "... and nothing is left on it" [ -z "$(ls -A "$tmp/full")" ]
  umount "$tmp/full"
else
  echo "contract: SKIPPED full-disk cases: cannot mount a 200 KiB tmpfs here (needs root)" >&2
fi

# --- part folders: complete or refused; Slurm arrays from 1 --------------------------------
"${sample[@]}" --iteration 1 --out "$tmp/whole.parquet"
for id in 1 2 3; do
  SLURM_ARRAY_TASK_ID=$id SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=3 "${sample[@]}" --iteration 1 --out "$tmp/parts"
done
check "a Slurm array 1-3 writes parts 0..2 of 3" [ "$(ls "$tmp/parts" | tr '\n' ' ')" = "part-00000-of-00003.parquet part-00001-of-00003.parquet part-00002-of-00003.parquet " ]
"$PY" - "$tmp/whole.parquet" "$tmp/parts" <<'PYEOF' || { echo "contract: FAIL the parts hold other rows than the unsharded run" >&2; fails=$((fails + 1)); }
import sys, pyarrow.parquet as pq, pyarrow.dataset as ds
whole = pq.read_table(sys.argv[1]).sort_by("rollout_id")
parts = ds.dataset(sys.argv[2], format="parquet").to_table().sort_by("rollout_id")
assert whole.num_rows == parts.num_rows > 0, (whole.num_rows, parts.num_rows)
assert whole.select(whole.column_names).equals(parts.select(whole.column_names)), "rows differ"
print(f"contract: ok   3 Slurm shards hold the unsharded run's {whole.num_rows} rows", file=sys.stderr)
PYEOF
expect 0 "score-rewards reads a complete part folder" -- "$BIN/score-rewards" "${g[@]}" --rollouts "$tmp/parts" --rule gold --out "$tmp/parts-scores.parquet"
mkdir -p "$tmp/missing" && cp "$tmp/parts"/part-0000{0,2}-of-00003.parquet "$tmp/missing/"
expect 3 "score-rewards on a folder missing a part" -- "$BIN/score-rewards" "${g[@]}" --rollouts "$tmp/missing" --rule gold --out "$tmp/s.parquet"
says "missing part(s) 1"
cp -r "$tmp/parts" "$tmp/mixed"
"${sample[@]}" --iteration 2 --shard-index 1 --num-shards 3 --out "$tmp/other-iteration"
cp "$tmp/other-iteration/part-00001-of-00003.parquet" "$tmp/mixed/"
expect 3 "ppo-update on a part folder mixing two runs" -- "$BIN/ppo-update" "${g[@]}" --model "$sft" --rollouts "$tmp/mixed" --scores "$tmp/parts-scores.parquet" --out "$tmp/pol"
says "mixes parts of different runs"
expect 2 "a part of 2 shards into a folder of 3" -- "${sample[@]}" --iteration 1 --shard-index 0 --num-shards 2 --out "$tmp/parts"
says "a run with 3 shards"
expect 2 "a part of another run into a folder" -- "${sample[@]}" --iteration 2 --shard-index 0 --num-shards 3 --out "$tmp/parts"

# --- ids from content: the same adapter elsewhere gives the same rollouts ---------------
cp -r "$pol" "$tmp/moved-policy"
"${sample[@]}" --adapter "$pol" --out "$tmp/a.parquet"
"${sample[@]}" --adapter "$tmp/moved-policy" --out "$tmp/b.parquet"
"$PY" - "$tmp/a.parquet" "$tmp/b.parquet" <<'PYEOF' || { echo "contract: FAIL a moved adapter changes the rollouts" >&2; fails=$((fails + 1)); }
import sys, pyarrow.parquet as pq
a, b = (pq.read_table(p) for p in sys.argv[1:])
assert a.equals(b), "rollouts differ (ids from paths?)"
print(f"contract: ok   a moved adapter gives the same rollouts and ids ({a.column('policy_id')[0]})", file=sys.stderr)
PYEOF

# --- temporaries of dead runs are swept ----------------------------------------------------
mkdir -p "$tmp/sweep" && echo x >"$tmp/sweep/.scores.parquet.tmp-4194311"
"$BIN/score-rewards" "${g[@]}" --rollouts "$r1" --rule gold --out "$tmp/sweep/scores.parquet"
check "a dead run's temporary file is swept" [ ! -e "$tmp/sweep/.scores.parquet.tmp-4194311" ]

# --- SIGTERM: no temporaries; a trainer checkpoints and resumes to the same bytes -------------
"${base_sample[@]}" --samples-per-prompt 8 --max-new-tokens 32 --out "$tmp/term/rollouts.parquet" 2>"$tmp/term.err" &
pid=$!
for _ in $(seq 100); do [ -n "$(find "$tmp/term" -name '.rollouts.parquet.tmp-*' 2>/dev/null)" ] && break; sleep 0.1; done
kill -TERM $pid
code=0; wait $pid || code=$?
check "sample-rollouts stopped by SIGTERM exits 143 (got $code)" [ "$code" = 143 ]
check "... and leaves no temporary and no output" no_temporaries "$tmp/term"
check "... and no output" [ ! -e "$tmp/term/rollouts.parquet" ]

# kill -9 (no chance to clean up), then a rerun: the same bytes and no leftovers. Both runs
# are given the same relative --out, so even the lineage in the footer is equal.
mkdir -p "$tmp/clean" "$tmp/kill9"
(cd "$tmp/clean" && "${sample[@]}" --iteration 1 --out rollouts.parquet)
(cd "$tmp/kill9" && exec "${base_sample[@]}" --samples-per-prompt 8 --max-new-tokens 32 --out rollouts.parquet) &
pid=$!
for _ in $(seq 100); do [ -n "$(find "$tmp/kill9" -name '.rollouts.parquet.tmp-*' 2>/dev/null)" ] && break; sleep 0.1; done
kill -KILL $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
check "kill -9 leaves a temporary behind" [ -n "$(find "$tmp/kill9" -name '.rollouts.parquet.tmp-*')" ]
(cd "$tmp/kill9" && "${sample[@]}" --iteration 1 --out rollouts.parquet)
check "the rerun sweeps it" no_temporaries "$tmp/kill9"
check "... and writes the same bytes as a run never killed" cmp -s "$tmp/clean/rollouts.parquet" "$tmp/kill9/rollouts.parquet"
# merge-adapter's temporary is a model-sized folder: one left by a dead run goes too.
mkdir -p "$tmp/merge/.merged.tmp-4194311" && head -c 1000000 /dev/zero >"$tmp/merge/.merged.tmp-4194311/model.safetensors"
"$BIN/merge-adapter" "${g[@]}" --model "$sft" --adapter "$pol" --out "$tmp/merge/merged" >/dev/null
check "merge-adapter sweeps a dead run's model-sized temporary" no_temporaries "$tmp/merge"
check "... and writes the merged model" [ -f "$tmp/merge/merged/config.json" ]

ppo=("$BIN/ppo-update" --no-progress --threads 2 --model "$sft" --adapter "$run/iter-001/policy" --algo ppo --lora-rank 4 --lora-alpha 8
     --minibatch-size 4 --epochs 8 --rollouts "$run/iter-002/rollouts.parquet" --scores "$run/iter-002/scores.parquet" --iteration 2)
"${ppo[@]}" -q --out "$tmp/ppo-whole" >/dev/null
"${ppo[@]}" -q --checkpoint-every 1 --out "$tmp/ppo-term" >/dev/null 2>"$tmp/ppo-term.err" &
pid=$!
for _ in $(seq 400); do [ -e "$tmp/ppo-term.checkpoint" ] && break; sleep 0.05; done
kill -TERM $pid
code=0; wait $pid || code=$?
check "ppo-update stopped by SIGTERM exits 143 (got $code)" [ "$code" = 143 ]
check "... after writing its checkpoint" [ -f "$tmp/ppo-term.checkpoint/checkpoint.json" ]
check "... and leaves no temporary" no_temporaries "$tmp"
"${ppo[@]}" -q --resume --out "$tmp/ppo-term" >/dev/null
check "the resumed policy is byte-identical to an uninterrupted run" \
  cmp -s "$tmp/ppo-whole/adapter_model.safetensors" "$tmp/ppo-term/adapter_model.safetensors"
"$PY" - "$tmp/ppo-whole/metrics.parquet" "$tmp/ppo-term/metrics.parquet" <<'PYEOF' || { echo "contract: FAIL resumed metrics differ" >&2; fails=$((fails + 1)); }
import sys, pyarrow.parquet as pq
a, b = (pq.read_table(p) for p in sys.argv[1:])
assert a.equals(b), "metrics differ"
print(f"contract: ok   ... and so are its {a.num_rows} metric rows", file=sys.stderr)
PYEOF

# The other two trainers: SIGTERM after their first checkpoint, then the same command again
# (resuming is the default).
# preempt NAME CHECKPOINT_GLOB OUT WHOLE -- COMMAND...: COMMAND --out OUT is stopped by
# SIGTERM once a file matches CHECKPOINT_GLOB, must exit 143, and rerun must give OUT's
# weights and metrics equal to WHOLE's (an uninterrupted run).
preempt() {
  local name=$1 ckpt=$2 out=$3 whole=$4
  shift 5
  "$@" -q --out "$whole" >/dev/null
  "$@" --checkpoint-every 1 --out "$out" >/dev/null 2>"$tmp/$name.err" &
  local pid=$! code=0
  for _ in $(seq 400); do compgen -G "$ckpt" >/dev/null && break; sleep 0.05; done
  kill -TERM $pid
  wait $pid || code=$?
  check "$name stopped by SIGTERM exits 143 (got $code)" [ "$code" = 143 ]
  check "... after writing its checkpoint" compgen -G "$ckpt" >/dev/null
  check "... and leaves no temporary" no_temporaries "$(dirname "$out")"
  "$@" --out "$out" >/dev/null 2>"$tmp/$name.resume.err"
  check "... and the same command again resumes" grep -q "resum" "$tmp/$name.resume.err"
  local w
  for w in "$whole"/*.safetensors; do
    check "the resumed $(basename "$w") is byte-identical" cmp -s "$w" "$out/$(basename "$w")"
  done
  "$PY" - "$whole/metrics.parquet" "$out/metrics.parquet" <<'PYEOF' || { echo "contract: FAIL resumed metrics differ" >&2; fails=$((fails + 1)); }
import sys, pyarrow.parquet as pq
a, b = (pq.read_table(p) for p in sys.argv[1:])
assert a.equals(b), "metrics differ"
print(f"contract: ok   ... and so are its {a.num_rows} metric rows", file=sys.stderr)
PYEOF
}
preempt train-rm-lora "$tmp/rm-term.checkpoint/*/checkpoint.json" "$tmp/rm-term" "$tmp/rm-whole" -- \
  "$BIN/train-rm-lora" --no-progress --threads 2 --model "$sft" --preferences "$run/data/preferences.parquet" \
  --lora-rank 4 --lora-alpha 8 --batch-size 4 --epochs 8 --max-steps 48 --learning-rate 1e-3
preempt train-sft "$tmp/sft-term.checkpoint/checkpoint.json" "$tmp/sft-term" "$tmp/sft-whole" -- \
  "$BIN/train-sft" --no-progress --threads 2 --model "$run/model" --data "$run/data/sft.parquet" \
  --batch-size 4 --max-steps 24 --learning-rate 1e-3

# A checkpoint of other flags: replaced by default (with a warning), refused under --resume.
sft_cmd=("$BIN/train-sft" --no-progress --threads 2 --model "$run/model" --data "$run/data/sft.parquet" --batch-size 4 --max-steps 6)
# --stop-after-steps: the same flag and exit code (1: no output yet, a rerun continues) in
# every trainer
expect 1 "train-sft --stop-after-steps 2" -- "${sft_cmd[@]}" --learning-rate 1e-3 --checkpoint-every 2 --stop-after-steps 2 --out "$tmp/sft-other"
says "rerun the same command to continue"
check "train-sft --stop-after-steps leaves a checkpoint and no output" \
  [ -f "$tmp/sft-other.checkpoint/checkpoint.json" -a ! -e "$tmp/sft-other" ]
expect 1 "train-rm-lora --stop-after-steps 2" -- "$BIN/train-rm-lora" --no-progress --threads 2 --model "$sft" \
  --preferences "$run/data/preferences.parquet" --lora-rank 4 --max-steps 6 --stop-after-steps 2 --out "$tmp/rm-stop"
check "train-rm-lora --stop-after-steps leaves a checkpoint" \
  compgen -G "$tmp/rm-stop.checkpoint/*/checkpoint.json"
expect 0 "train-rm-lora run again finishes" -- "$BIN/train-rm-lora" --no-progress --threads 2 --model "$sft" \
  --preferences "$run/data/preferences.parquet" --lora-rank 4 --max-steps 6 --out "$tmp/rm-stop"
says "resumed from checkpoint"
expect 3 "train-sft --resume with a checkpoint of other flags" -- "${sft_cmd[@]}" --learning-rate 2e-3 --resume --out "$tmp/sft-other"
says "resume settings mismatch"
expect 0 "train-sft (default) with a checkpoint of other flags starts over" -- "${sft_cmd[@]}" --learning-rate 2e-3 --out "$tmp/sft-other"
says "starting over"

if [ "$fails" -gt 0 ]; then
  echo "contract: $fails case(s) FAILED" >&2
  exit 1
fi
echo "contract: every case passed" >&2
