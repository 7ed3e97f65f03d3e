#!/usr/bin/env bash
# Submits the PERL loop of pipelines/demo.mk as Slurm jobs chained by
# --dependency=afterok; the same CONF folder of <stage>.toml files drives make and Slurm.
#
#   pipelines/slurm/submit.sh [NAME=VALUE ...]
#   pipelines/slurm/submit.sh BIN=target/release RUN=runs/slurm CONF=pipelines/demo ITERATIONS=8 SHARDS=4
#
# Parameters (NAME=VALUE arguments or environment variables):
#   BIN         folder of the binaries (default target/release); must be visible on the nodes
#   RUN         run folder on a shared file system (default runs/slurm); must not hold a run yet
#   CONF        folder of <stage>.toml files (default pipelines/demo)
#   ITERATIONS  policy iterations (default 8)
#   SHARDS      array tasks of sample-rollouts and score-rewards per iteration (default 4)
#   THREADS     --threads of each stage and --cpus-per-task of each job (default 2)
#   SEED        --seed (default 0; iteration i samples with SEED + i, as make does)
#   CHECKPOINT_EVERY  training stages checkpoint every N optimiser steps (default 10)
#   MEM         --mem of each job (default: the partition's default)
#   TIME        --time of each job (default: the partition's default)
#   TRAIN_TIME  --time of the training jobs (default TIME)
#   SIGNAL_GRACE seconds before a training job's time limit at which it gets SIGTERM to
#               checkpoint and requeue itself (--signal=B:TERM@SECS; default 180)
#   SBATCH_ARGS extra sbatch options for every job, e.g. "--partition=cpu --account=me"
#   ONLY        submit this one stage (e.g. ONLY=rm, ONLY=ppo:2) without dependencies
#   DRY_RUN=1   print the sbatch commands instead of running them
#
# Prints one line per job (name and job id) and writes them to RUN/slurm/jobs.tsv; job
# logs go to RUN/slurm/logs/. The last job is the report: RUN/report/summary.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "submit: $*" >&2; exit 2; }

for a in "$@"; do
  case "$a" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    [A-Z_]*=*) export "${a?}" ;;
    *) die "unknown argument '$a' (parameters are NAME=VALUE; see --help)" ;;
  esac
done
BIN=${BIN:-target/release}
RUN=${RUN:-runs/slurm}
CONF=${CONF:-pipelines/demo}
ITERATIONS=${ITERATIONS:-8}
SHARDS=${SHARDS:-4}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-10}
SIGNAL_GRACE=${SIGNAL_GRACE:-180}
for v in ITERATIONS SHARDS THREADS CHECKPOINT_EVERY SIGNAL_GRACE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$SEED'"
[ -d "$CONF" ] || die "CONF $CONF is not a folder"
for f in data model sft pairs labels rm sample score ppo eval; do
  [ -f "$CONF/$f.toml" ] || die "missing $CONF/$f.toml"
done
for b in prep-data init-model train-sft train-rm-lora sample-rollouts score-rewards ppo-update merge-adapter report; do
  [ -x "$BIN/$b" ] || die "missing binary $BIN/$b (make build)"
done
BIN=$(cd "$BIN" && pwd)
CONF=$(cd "$CONF" && pwd)
RUN=$(realpath -m "$RUN")
if [ -z "${ONLY:-}" ] && { [ -e "$RUN/data" ] || [ -e "$RUN/slurm/jobs.tsv" ]; }; then
  die "$RUN already holds a run; give a new RUN folder"
fi
export BIN RUN CONF ITERATIONS SHARDS THREADS SEED CHECKPOINT_EVERY
[ -n "${DRY_RUN:-}" ] || mkdir -p "$RUN/slurm/logs"
# shellcheck disable=SC2206
extra=(${SBATCH_ARGS:-})
common=(--parsable --export=ALL --cpus-per-task="$THREADS" --kill-on-invalid-dep=yes "${extra[@]}")
[ -n "${MEM:-}" ] && common+=(--mem="$MEM")
[ -n "${TIME:-}" ] && common+=(--time="$TIME")
train=(--requeue --open-mode=append --signal=B:TERM@"$SIGNAL_GRACE")
[ -n "${TRAIN_TIME:-${TIME:-}}" ] && train+=(--time="${TRAIN_TIME:-$TIME}")

# submit NAME DEPS [sbatch options] -- STAGE [ITERATION]: prints the job id
submit() {
  local name=$1 deps=$2; shift 2
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  local log=$RUN/slurm/logs/$name-%j.out
  [[ " ${opts[*]} " == *" --array="* ]] && log=$RUN/slurm/logs/$name-%A_%a.out
  local cmd=(sbatch "${common[@]}" --job-name="perl-$name" --output="$log"
             ${deps:+--dependency=afterok:$deps} "${opts[@]}" "$here/stage.sh" "$@")
  local id
  if [ -n "${DRY_RUN:-}" ]; then
    echo "${cmd[*]}" >&2
    id=$((++dry_id))
  else
    id=$("${cmd[@]}") || die "sbatch failed for $name"
    id=${id%%;*}
  fi
  [ -n "${DRY_RUN:-}" ] || printf '%s\t%s\n' "$name" "$id" >>"$RUN/slurm/jobs.tsv"
  printf '%-22s %s\n' "$name" "$id"
  JOB=$id
}
dry_id=0
deps() { local IFS=:; echo "$*"; }
iter() { printf 'iter-%03d' "$1"; }

if [ -n "${ONLY:-}" ]; then
  stage=${ONLY%%:*}; it=
  [[ "$ONLY" == *:* ]] && it=${ONLY#*:}
  opts=()
  case "$stage" in
    sft | rm | ppo) opts=("${train[@]}") ;;
    sample | score) opts=(--array=1-"$SHARDS") ;;
  esac
  submit "only-$stage${it:+-$it}" "" "${opts[@]}" -- "$stage" ${it:+"$it"}
  exit 0
fi

# --- data, model, SFT; reward model from oracle-labelled pairs of SFT samples ---------
submit data "" -- data; data=$JOB
submit model "$data" -- model; model=$JOB
submit sft "$model" "${train[@]}" -- sft; sft=$JOB
submit sample-pairs "$sft" -- pairs; pairs=$JOB
submit score-pairs "$pairs" -- score-pairs; score_pairs=$JOB
submit label-pairs "$score_pairs" -- labels; labels=$JOB
submit train-rm "$labels" "${train[@]}" -- rm; rm=$JOB

# --- N x (sample-rollouts array -> score-rewards array -> ppo-update) -----------------
policy=$sft
for i in $(seq 1 "$ITERATIONS"); do
  submit "sample-$(iter "$i")" "$policy" --array=1-"$SHARDS" -- sample "$i"; sample=$JOB
  submit "score-$(iter "$i")" "$(deps "$sample" "$rm")" --array=1-"$SHARDS" -- score "$i"; score=$JOB
  submit "ppo-$(iter "$i")" "$score" "${train[@]}" -- ppo "$i"; policy=$JOB
done

# --- merge, held-out evaluation of the SFT model and the final policy, report ---------
submit merge-adapter "$policy" -- merge; merge=$JOB
submit eval-sample-sft "$sft" -- eval-sample-sft; es_sft=$JOB
submit eval-sample-policy "$policy" -- eval-sample-policy; es_pol=$JOB
submit eval-score-sft "$(deps "$es_sft" "$rm")" -- eval-score-sft; ec_sft=$JOB
submit eval-score-policy "$(deps "$es_pol" "$rm")" -- eval-score-policy; ec_pol=$JOB
submit report "$(deps "$merge" "$ec_sft" "$ec_pol")" -- report
if [ -n "${DRY_RUN:-}" ]; then
  echo "submit: dry run, $dry_id jobs, nothing submitted" >&2
else
  echo "submit: $(wc -l <"$RUN/slurm/jobs.tsv") jobs; logs in $RUN/slurm/logs; report job $JOB -> $RUN/report/summary.md" >&2
fi
