#!/usr/bin/env bash
# The Slurm job script of every PERL stage (submitted by pipelines/slurm/submit.sh):
#
#   sbatch [options] pipelines/slurm/stage.sh STAGE [ITERATION]
#
# STAGE: data model sft pairs score-pairs labels rm sample score ppo merge
#        eval-sample-sft eval-sample-policy eval-score-sft eval-score-policy report
# ITERATION (1..N) for sample, score and ppo. The command line of each stage is the one
# pipelines/demo.mk + pipelines/rl-loop.mk run, with the flags from $CONF/<stage>.toml.
#
# Environment (exported by submit.sh; sbatch passes the submitter's environment on):
#   BIN RUN CONF ITERATIONS SEED THREADS SHARDS, absolute paths for the folders;
#   CHECKPOINT_EVERY (training stages: checkpoint every N optimiser steps, default 10).
#
# sample and score run as job arrays (--array=1-SHARDS): the binaries take their shard from
# SLURM_ARRAY_TASK_ID/_MIN/_COUNT (no --shard-index/--num-shards here) and, with more than
# one shard, write OUT/part-0000i-of-0000N.parquet into the folder iter-NNN/rollouts/
# (scores/); score-rewards and ppo-update read such a folder. With SHARDS=1 they write
# iter-NNN/rollouts.parquet and scores.parquet, as make does.
#
# Training stages (sft, rm, ppo) always pass --resume and --checkpoint-every: a rerun of
# the job (requeue after preemption, node failure, `scontrol requeue`, or the time-limit
# warning below) continues from the last checkpoint; with no checkpoint it starts fresh.
# On SIGTERM (scontrol requeue, preemption, scancel, or --signal=B:TERM@SECS before the time
# limit) this script forwards TERM to the stage, which writes a checkpoint at its next step
# and exits 143. When the job is still RUNNING at that point (nobody but the time-limit
# warning or `scancel --signal=TERM --batch` stopped it) and it is requeueable, the script
# requeues itself (scontrol requeue) so the stage resumes; Slurm requeues it itself in the
# other cases (scontrol requeue, preemption with PreemptMode=REQUEUE) and a plain scancel
# stays cancelled.
#
# Exit status: the stage's (0 ok, 1 failure, retryable, 2 usage, 3 bad input, 143 SIGTERM);
# 2 when this script is called wrongly (unknown stage, missing variable or .toml file).
set -uo pipefail

log() { echo "[slurm-stage ${STAGE_NAME:-?}] $*" >&2; }
usage_fail() { log "error: $*"; exit 2; }

stage=${1:-}
iteration=${2:-}
for v in BIN RUN CONF ITERATIONS SEED THREADS SHARDS; do
  [ -n "${!v:-}" ] || usage_fail "environment variable $v is not set (submit with pipelines/slurm/submit.sh)"
done
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-10}

iter_name() { printf 'iter-%03d' "$1"; }
# Rollouts/scores of an iteration: a folder of part files when sharded, else one file.
part_path() {
  if [ "$SHARDS" -gt 1 ]; then echo "$RUN/$(iter_name "$1")/$2"; else echo "$RUN/$(iter_name "$1")/$2.parquet"; fi
}
# Flags of a stage: --config $CONF/<name>.toml, as make's recipes pass them (common.mk: `args`).
stage_args() {
  local f=$CONF/$1.toml
  [ -f "$f" ] || usage_fail "missing $f"
  ARGS=(--config "$f")
}
# --resume/--checkpoint-every for a trainer, when its --help offers them.
resume_flags() {
  local help
  help=$("$BIN/$1" --help 2>/dev/null || true)
  RESUME=()
  if grep -q -- '--resume' <<<"$help" && grep -q -- '--checkpoint-every' <<<"$help"; then
    RESUME=(--resume --checkpoint-every "$CHECKPOINT_EVERY")
  else
    log "warning: $1 has no --resume/--checkpoint-every; a rerun starts from the beginning"
  fi
}
need_iteration() {
  # shellcheck disable=SC2015  # any failed test is a usage error
  [[ "$iteration" =~ ^[0-9]+$ ]] && [ "$iteration" -ge 1 ] && [ "$iteration" -le "$ITERATIONS" ] \
    || usage_fail "stage $stage needs an iteration 1..$ITERATIONS, got '${iteration}'"
}
need_array() {
  [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || usage_fail "stage $stage runs as a job array (--array=1-$SHARDS)"
  [ "${SLURM_ARRAY_TASK_COUNT:-}" = "$SHARDS" ] \
    || usage_fail "array has ${SLURM_ARRAY_TASK_COUNT:-?} tasks but SHARDS=$SHARDS"
}

G=(--seed "$SEED" --threads "$THREADS")
DATA=$RUN/data
SFT=$RUN/sft
RM=$RUN/rm
LAST=$RUN/$(iter_name "$ITERATIONS")/policy
prev_policy=()
ARGS=()
RESUME=()
STAGE_NAME=$stage
case "$stage" in
  data)
    stage_args data
    cmd=("$BIN/prep-data" synthetic "${G[@]}" "${ARGS[@]}" --out-dir "$DATA") ;;
  model)
    stage_args model
    cmd=("$BIN/init-model" "${G[@]}" "${ARGS[@]}" --text-file "$DATA/sft.parquet"
         --text-column prompt --text-column completion --out "$RUN/model") ;;
  sft)
    stage_args sft; resume_flags train-sft
    cmd=("$BIN/train-sft" "${G[@]}" "${ARGS[@]}" "${RESUME[@]}" --model "$RUN/model"
         --data "$DATA/sft.parquet" --out "$SFT") ;;
  pairs)
    stage_args pairs
    cmd=("$BIN/sample-rollouts" "${G[@]}" "${ARGS[@]}" --model "$SFT" --prompts "$DATA/prompts.parquet"
         --iteration 0 --no-ref-logprobs --out "$RUN/pairs/rollouts.parquet") ;;
  score-pairs)
    cmd=("$BIN/score-rewards" "${G[@]}" --rollouts "$RUN/pairs/rollouts.parquet" --rule gold
         --out "$RUN/pairs/scores.parquet") ;;
  labels)
    stage_args labels
    cmd=("$BIN/prep-data" pairs "${G[@]}" "${ARGS[@]}" --rollouts "$RUN/pairs/rollouts.parquet"
         --scores "$RUN/pairs/scores.parquet" --score-column gold --out "$DATA/preferences.parquet") ;;
  rm)
    stage_args rm; resume_flags train-rm-lora
    cmd=("$BIN/train-rm-lora" "${G[@]}" "${ARGS[@]}" "${RESUME[@]}" --model "$SFT"
         --preferences "$DATA/preferences.parquet" --out "$RM") ;;
  sample)
    need_iteration; need_array
    STAGE_NAME=sample-$(iter_name "$iteration")-task$SLURM_ARRAY_TASK_ID
    stage_args sample
    [ "$iteration" -gt 1 ] && prev_policy=(--adapter "$RUN/$(iter_name $((iteration - 1)))/policy")
    out=$(part_path "$iteration" rollouts)
    [ "$SHARDS" -gt 1 ] && mkdir -p "$out"
    cmd=("$BIN/sample-rollouts" --seed $((SEED + iteration)) --threads "$THREADS" "${ARGS[@]}"
         --model "$SFT" "${prev_policy[@]}" --prompts "$DATA/prompts.parquet" --iteration "$iteration"
         --out "$out") ;;
  score)
    need_iteration; need_array
    STAGE_NAME=score-$(iter_name "$iteration")-task$SLURM_ARRAY_TASK_ID
    stage_args score
    out=$(part_path "$iteration" scores)
    [ "$SHARDS" -gt 1 ] && mkdir -p "$out"
    cmd=("$BIN/score-rewards" "${G[@]}" "${ARGS[@]}" --model "$SFT" --reward-model "$RM"
         --rollouts "$(part_path "$iteration" rollouts)" --out "$out") ;;
  ppo)
    need_iteration
    STAGE_NAME=ppo-$(iter_name "$iteration")
    stage_args ppo; resume_flags ppo-update
    [ "$iteration" -gt 1 ] && prev_policy=(--adapter "$RUN/$(iter_name $((iteration - 1)))/policy")
    cmd=("$BIN/ppo-update" "${G[@]}" "${ARGS[@]}" "${RESUME[@]}" --model "$SFT" "${prev_policy[@]}"
         --iteration "$iteration" --rollouts "$(part_path "$iteration" rollouts)"
         --scores "$(part_path "$iteration" scores)" --out "$RUN/$(iter_name "$iteration")/policy") ;;
  merge)
    cmd=("$BIN/merge-adapter" "${G[@]}" --model "$SFT" --adapter "$LAST" --out "$RUN/final/merged" --verify) ;;
  eval-sample-sft)
    stage_args eval
    cmd=("$BIN/sample-rollouts" "${G[@]}" "${ARGS[@]}" --model "$SFT" --prompts "$DATA/eval_prompts.parquet"
         --iteration "$ITERATIONS" --out "$RUN/final/sft_rollouts.parquet") ;;
  eval-sample-policy)
    stage_args eval
    cmd=("$BIN/sample-rollouts" "${G[@]}" "${ARGS[@]}" --model "$SFT" --adapter "$LAST"
         --prompts "$DATA/eval_prompts.parquet" --iteration "$ITERATIONS" --out "$RUN/final/policy_rollouts.parquet") ;;
  eval-score-sft | eval-score-policy)
    which=${stage#eval-score-}
    stage_args score
    cmd=("$BIN/score-rewards" "${G[@]}" "${ARGS[@]}" --model "$SFT" --reward-model "$RM"
         --rollouts "$RUN/final/${which}_rollouts.parquet" --out "$RUN/final/${which}_scores.parquet") ;;
  report)
    cmd=("$BIN/report" "${G[@]}" --run-dir "$RUN" --out-dir "$RUN/report") ;;
  *)
    usage_fail "unknown stage '${stage}'" ;;
esac

# --- run it: TERM goes to the stage; the job's exit status is the stage's ---------------
terms=0
child=
job_state() { scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o "$1=[A-Z_0-9]*" | head -1 | cut -d= -f2; }
# shellcheck disable=SC2317  # invoked by the trap
on_term() {
  terms=$((terms + 1))
  # Slurm's own kill (scontrol requeue, preemption, scancel, time limit) signals every
  # process of the job, the stage included: only a signal meant for this shell alone (the
  # job still RUNNING: --signal=B:TERM@SECS, scancel --batch) is passed on, so the stage
  # sees one TERM.
  if [ -z "${SLURM_JOB_ID:-}" ] || [ "$(job_state JobState)" = RUNNING ]; then
    log "SIGTERM: passing it to the stage (checkpoint at its next step, exit 143)"
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  else
    log "SIGTERM from Slurm (job $(job_state JobState)): the stage got it too"
  fi
}
trap on_term TERM

log "job ${SLURM_JOB_ID:-none}${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID} on $(hostname -s), restart ${SLURM_RESTART_COUNT:-0}: ${cmd[*]}"
start=$(date +%s.%N)
"${cmd[@]}" &
child=$!
rc=
while :; do
  before=$terms
  wait "$child"
  r=$?
  # a trapped signal interrupts `wait` (status > 128) while the stage may still run: wait again
  if [ "$r" -gt 128 ] && [ "$terms" != "$before" ]; then rc=$r; continue; fi
  [ "$r" = 127 ] && [ -n "$rc" ] || rc=$r
  break
done
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
log "exit $rc after ${secs}s"

if [ "$rc" = 0 ]; then
  # seconds per stage for the report (as scripts/timed.sh writes them for make)
  timings=$RUN/timings.jsonl
  (
    flock 9
    if [ -f "$timings" ]; then grep -v "\"stage\": \"$STAGE_NAME\"" "$timings" >"$timings.tmp" || true; mv "$timings.tmp" "$timings"; fi
    printf '{"stage": "%s", "seconds": %s}\n' "$STAGE_NAME" "$secs" >>"$timings"
  ) 9>>"$RUN/.timings.lock"
elif [ "$terms" -gt 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  state=$(job_state JobState)
  requeue=$(job_state Requeue)
  if [ "$state" = RUNNING ] && [ "$requeue" = 1 ]; then
    log "stopped by SIGTERM while the job still runs (time-limit warning): requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID" || log "warning: scontrol requeue $SLURM_JOB_ID failed"
  else
    log "stopped by SIGTERM; job state ${state:-unknown}: Slurm decides (requeue or cancel)"
  fi
fi
exit "$rc"
