#!/usr/bin/env bash
# The PERL loop under a real workflow engine: a private single-node Slurm cluster runs
# pipelines/slurm/submit.sh on the micro configuration of the end-to-end test
# (tests/e2e/demo, 2 iterations, sample-rollouts and score-rewards as job arrays), and
#  (a) every job (every array task) ends COMPLETED with exit code 0;
#  (b) the rollouts and scores of each iteration (part folders written by the array tasks)
#      equal those of a plain `make -f pipelines/demo.mk` run of the same configuration:
#      same rows, matched by rollout_id, every column equal;
#  (c) preemption: a train-rm-lora job (more steps than the micro run, a checkpoint every
#      20 steps) is stopped mid-run, once with `scontrol requeue` (preemption) and once with
#      `scancel --signal=TERM --batch` (the time-limit warning; the job requeues itself);
#      each time it resumes from its checkpoint and writes an adapter_model.safetensors
#      byte-identical to an uninterrupted job's.
# Needs root and the packages slurm-wlm and munge (.ci/run installs them). When Slurm
# cannot be started the test FAILS; it never skips. The daemons are stopped on exit.
#
#   bash tests/slurm.sh            # BIN=target/release SHARDS=2 THREADS=1; KEEP=1 keeps the temp folder
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=${BIN:-$root/target/release}
SHARDS=${SHARDS:-2}
THREADS=${THREADS:-1}
ITERATIONS=2
T0=$SECONDS
tmp=$(mktemp -d /tmp/perl-slurm.XXXXXX)
cluster=$tmp/cluster
cleanup() {
  local rc=$?
  pipelines/slurm/local-cluster.sh stop "$cluster" || true
  if [ -n "${KEEP:-}" ] || [ "$rc" != 0 ]; then
    echo "slurm test: files kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "slurm test FAILED: $*" >&2; exit 1; }
failed=()
# a failed check that does not stop the later ones
check_failed() { echo "slurm test: check FAILED: $*" >&2; failed+=("$*"); }
say() { echo "slurm test [$((SECONDS - T0))s]: $*" >&2; }

for b in prep-data init-model train-sft train-rm-lora sample-rollouts score-rewards score-rewards-rm ppo-update merge-adapter report; do
  [ -x "$BIN/$b" ] || fail "missing $BIN/$b (run make build first)"
done
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
"$PY" -c 'import pyarrow' || fail "pyarrow missing in $PY"

# --- the cluster ------------------------------------------------------------------------
pipelines/slurm/local-cluster.sh start "$cluster" >"$tmp/cluster.log" 2>&1 || {
  cat "$tmp/cluster.log" >&2
  for f in "$cluster"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  fail "could not start a private Slurm cluster (see above)"
}
export SLURM_CONF=$cluster/slurm.conf
say "cluster up ($(sinfo -h -o '%N %c CPUs %m MB'))"

# Shows the logs of the jobs that did not complete.
show_failed() {
  scontrol show job -o 2>/dev/null | while read -r line; do
    state=$(grep -o 'JobState=[A-Z_]*' <<<"$line" | cut -d= -f2)
    exitc=$(grep -o ' ExitCode=[0-9:]*' <<<"$line" | cut -d= -f2)
    if [ "$state" != COMPLETED ] || [ "$exitc" != 0:0 ]; then
      echo "--- $(grep -oE '^JobId=[0-9]+( ArrayJobId=[0-9]+ ArrayTaskId=[0-9]+)?' <<<"$line") $(grep -o 'JobName=[^ ]*' <<<"$line") $state exit $exitc" >&2
      out=$(grep -o 'StdOut=[^ ]*' <<<"$line" | cut -d= -f2)
      [ -f "$out" ] && tail -15 "$out" >&2
    fi
  done
}
# wait_idle SECONDS: until no job is pending or running
wait_idle() {
  local limit=$1 start=$SECONDS
  while [ -n "$(squeue -h -o %i)" ]; do
    if [ $((SECONDS - start)) -gt "$limit" ]; then
      squeue >&2
      show_failed
      fail "jobs still queued or running after ${limit}s"
    fi
    sleep 2
  done
}
job_field() { scontrol show job -o "$1" | grep -o " $2=[^ ]*" | head -1 | cut -d= -f2; }
# wait_job ID STATE SECONDS
wait_job() {
  local id=$1 want=$2 limit=$3 start=$SECONDS st
  while :; do
    st=$(job_field "$id" JobState)
    [ "$st" = "$want" ] && return 0
    case "$st" in FAILED | CANCELLED | TIMEOUT | OUT_OF_MEMORY | NODE_FAIL) show_failed; fail "job $id ended $st" ;; esac
    [ $((SECONDS - start)) -gt "$limit" ] && { show_failed; fail "job $id is $st, not $want, after ${limit}s"; }
    sleep 0.5
  done
}

# --- (a) the pipeline through Slurm ------------------------------------------------------
conf=$tmp/conf
cp -r tests/e2e/demo "$conf"
srun_dir=$tmp/slurm-run
common=(BIN="$BIN" CONF="$conf" ITERATIONS="$ITERATIONS" SHARDS="$SHARDS" THREADS="$THREADS" SEED=0)
pipelines/slurm/submit.sh "${common[@]}" RUN="$srun_dir" CHECKPOINT_EVERY=2 >"$tmp/submit.log" \
  || { cat "$tmp/submit.log" >&2; fail "submit.sh"; }
say "submitted $(wc -l <"$srun_dir/slurm/jobs.tsv") jobs (sample and score as arrays of $SHARDS)"
wait_idle 420
records=$(scontrol show job -o | grep -c 'JobName=perl-' || true)
expected=$((15 + 4 * SHARDS))
bad=$(scontrol show job -o | grep 'JobName=perl-' | grep -vc 'JobState=COMPLETED .* ExitCode=0:0' || true)
if [ "$bad" != 0 ] || [ "$records" != "$expected" ]; then
  show_failed
  fail "(a) $bad of $records job records did not complete with exit 0 (expected $expected records)"
fi
[ -f "$srun_dir/report/summary.json" ] || fail "(a) no report/summary.json"
if [ "$SHARDS" -gt 1 ]; then
  for i in $(seq "$ITERATIONS"); do
    for kind in rollouts scores; do
      n=$(find "$srun_dir/iter-00$i/$kind" -name 'part-*-of-*.parquet' | wc -l)
      [ "$n" = "$SHARDS" ] || fail "(a) iter-00$i/$kind has $n part files, expected $SHARDS"
    done
  done
fi
say "(a) ok: $records job records completed with exit 0; report written"

# --- (b) the same rollouts and scores as make -------------------------------------------
make_dir=$tmp/make-run
make --no-print-directory -f pipelines/demo.mk BIN="$BIN" RUN="$make_dir" CONF="$conf" \
  ITERATIONS=$ITERATIONS THREADS="$THREADS" SEED=0 "iter-00$ITERATIONS" >"$tmp/make.log" 2>&1 \
  || { tail -30 "$tmp/make.log" >&2; fail "make -f pipelines/demo.mk"; }
say "make run done"
if "$PY" - "$srun_dir" "$make_dir" "$ITERATIONS" <<'PYEOF'

import os
import sys
import pyarrow.parquet as pq

slurm, make, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])

def table(path):
    # the folder of part files written by the array tasks, or one file
    return pq.ParquetDataset(path).read() if os.path.isdir(path) else pq.read_table(path + ".parquet")

ok = True
for i in range(1, iterations + 1):
    it = f"iter-{i:03d}"
    for kind in ["rollouts", "scores"]:
        a = table(f"{slurm}/{it}/{kind}")
        b = table(f"{make}/{it}/{kind}")
        what = f"{it}/{kind}"
        if sorted(a.column_names) != sorted(b.column_names):
            print(f"{what}: columns differ: {a.column_names} vs {b.column_names}"); ok = False; continue
        ida, idb = a.column("rollout_id").to_pylist(), b.column("rollout_id").to_pylist()
        if len(set(ida)) != len(ida) or len(set(idb)) != len(idb):
            print(f"{what}: duplicate rollout_id"); ok = False; continue
        if set(ida) != set(idb):
            print(f"{what}: rollout_id sets differ ({len(set(ida) - set(idb))} only in Slurm's, "
                  f"e.g. {sorted(set(ida) - set(idb))[:2]} vs {sorted(set(idb) - set(ida))[:2]})")
            ok = False
            if i > 1:  # ids carry the policy: did the previous iteration's policies differ?
                prev = f"iter-{i - 1:03d}/policy/adapter_model.safetensors"
                same = open(f"{slurm}/{prev}", "rb").read() == open(f"{make}/{prev}", "rb").read()
                print(f"  {prev}: {'identical' if same else 'DIFFERENT'} in the two runs"
                      + ("" if same else " (ppo-update gave another policy from the part folders)"))
            if kind == "rollouts":  # say whether the contents agree when matched otherwise
                key = lambda t: t.sort_by([("prompt_id", "ascending"), ("sample_index", "ascending")])
                sa, sb = key(a), key(b)
                same = [c for c in b.column_names if c != "rollout_id" and sa.column(c).equals(sb.column(c))]
                print(f"  matched by (prompt_id, sample_index): {len(same)} of {len(b.column_names) - 1} other columns equal")
            continue
        a = a.sort_by("rollout_id").select(b.column_names)
        b = b.sort_by("rollout_id")
        diff = [c for c in b.column_names if not a.column(c).equals(b.column(c))]
        if diff:
            print(f"{what}: columns differ in value: {diff}"); ok = False
        else:
            print(f"{what}: {b.num_rows} rows, {b.num_columns} columns equal")
sys.exit(0 if ok else 1)
PYEOF
then
  say "(b) ok: per-iteration rollouts and scores equal make's"
else
  check_failed "(b) Slurm and make rollouts/scores differ (see above)"
fi

# --- (c) preemption: a requeued train-rm-lora resumes to the same bytes -------------------
pre=$tmp/preempt
mkdir -p "$pre/run"
ln -s "$srun_dir/data" "$pre/run/data"
ln -s "$srun_dir/sft" "$pre/run/sft"
cp -r "$conf" "$pre/conf"
# enough steps (about 10 ms each here) to be interrupted mid-run; the rest as in the micro
# configuration
sed -i 's/^max-steps = .*/max-steps = '"${PREEMPT_STEPS:-800}"'/' "$pre/conf/rm.toml"
grep -q '^epochs = ' "$pre/conf/rm.toml" && fail "(c) the micro rm.toml sets epochs; update this test"
echo "epochs = 1000" >>"$pre/conf/rm.toml"
pre_args=("${common[@]}" CONF="$pre/conf" RUN="$pre/run" CHECKPOINT_EVERY=20 ONLY=rm)
adapter=$pre/run/rm/adapter_model.safetensors

id=$(pipelines/slurm/submit.sh "${pre_args[@]}" | awk '{print $2}')
wait_job "$id" COMPLETED 240
[ -f "$adapter" ] || fail "(c) uninterrupted job $id wrote no $adapter"
cp "$adapter" "$pre/uninterrupted.safetensors"
say "(c) uninterrupted train-rm-lora job $id done"

# interrupted HOW: runs the same job again, stops it mid-run HOW, lets the requeued job
# finish and compares its adapter with the uninterrupted one.
#   requeue: `scontrol requeue` (what preemption with PreemptMode=REQUEUE does): Slurm
#            signals the job and requeues it;
#   signal:  `scancel --signal=TERM --batch` (what --signal=B:TERM@SECS does before the time
#            limit): only the batch shell is signalled; stage.sh passes SIGTERM on and
#            requeues the job itself.
interrupted() {
  local how=$1 id start restarts log
  rm -rf "$pre/run/rm" "$pre/run/rm.checkpoint"
  id=$(pipelines/slurm/submit.sh "${pre_args[@]}" | awk '{print $2}')
  wait_job "$id" RUNNING 120
  # interrupt once a checkpoint is written (its checkpoint.json; the folder alone appears
  # at the start) and before the job ends
  start=$SECONDS
  until [ -n "$(find "$pre/run" -path '*/rm.checkpoint*/checkpoint.json' 2>/dev/null)" ]; do
    [ "$(job_field "$id" JobState)" = RUNNING ] || fail "(c) job $id left RUNNING before writing a checkpoint; raise PREEMPT_STEPS"
    [ $((SECONDS - start)) -gt 120 ] && fail "(c) no checkpoint from job $id after 120 s"
    sleep 0.2
  done
  case "$how" in
    requeue) scontrol requeue "$id" || fail "(c) scontrol requeue $id" ;;
    signal) scancel --signal=TERM --batch "$id" || fail "(c) scancel --signal=TERM --batch $id" ;;
  esac
  say "(c) $how: job $id interrupted mid-run"
  # Slurm holds a requeued job back for two minutes (BeginTime); once it is pending again,
  # let it start a few seconds later, not at once: slurmd refuses ("Job credential revoked")
  # a job started again within the second its previous run's credential was revoked, and
  # the job then ends FAILED
  start=$SECONDS
  until [ "$(job_field "$id" JobState)" = PENDING ]; do
    [ $((SECONDS - start)) -gt 90 ] && fail "(c) $how: job $id not pending again (state $(job_field "$id" JobState)): not requeued"
    sleep 0.2
  done
  scontrol update JobId="$id" StartTime=now+3 || fail "(c) scontrol update JobId=$id StartTime=now+3"
  wait_job "$id" COMPLETED 240
  restarts=$(job_field "$id" Restarts)
  [ "${restarts:-0}" -ge 1 ] || fail "(c) $how: job $id shows Restarts=${restarts:-?}: it was not requeued"
  log=$(job_field "$id" StdOut)
  grep -q 'exit 143' "$log" || fail "(c) $how: the interrupted run of job $id did not exit 143 (log $log)"
  grep -qi 'resumed from checkpoint' "$log" || fail "(c) $how: the rerun of job $id did not resume from a checkpoint (log $log)"
  if cmp "$pre/uninterrupted.safetensors" "$adapter"; then
    say "(c) ok ($how): job $id (restarts $restarts) resumed and wrote identical adapter bytes"
  else
    check_failed "(c) $how: adapter of the requeued job $id differs from the uninterrupted one"
  fi
}
interrupted requeue
interrupted signal

if [ ${#failed[@]} -gt 0 ]; then
  printf 'slurm test FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
say "ok"
