#!/usr/bin/env bash
# End-to-end tests of the whole chain (part of `make test`):
#  1. the demo pipeline (pipelines/demo.mk) on a micro configuration: every stage runs,
#     the report's summary.json holds the headline figures;
#  1b. pipelines/demo-perl.mk on the same micro configuration: PERL's table, four arms;
#  2. make caching: a rerun does nothing; touching the reward-model config reruns the
#     reward model and what depends on it, not the data, model or SFT; then the stage
#     contract case by case (tests/contract.sh) on the micro run;
#  3. the real-data pipeline (pipelines/perl.mk) on a tiny model written by transformers
#     and HH-RLHF-format fixture data;
#  4. full fine-tuning of the policy (ppo-update --full) on the micro demo's SFT model: its
#     output feeds sample-rollouts and a second --full iteration, and transformers loads it;
#  5. outcome (tests/outcome.sh): the demo configuration, 3 iterations, learns: reward-model
#     accuracy, gold win rate and gold gain over SFT above thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=$root/target/release
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "e2e FAILED: $*" >&2; exit 1; }

# --- 1. micro demo -------------------------------------------------------------------
conf=$tmp/conf-demo
cp -r tests/e2e/demo "$conf"
run=$tmp/demo
mk=(make --no-print-directory -f pipelines/demo.mk BIN="$BIN" RUN="$run" CONF="$conf" ITERATIONS=2 THREADS=2)
echo "e2e: micro demo in $run" >&2
"${mk[@]}" >"$tmp/demo.log" 2>&1 || { tail -50 "$tmp/demo.log"; fail "demo pipeline"; }
"$PY" - "$run/report/summary.json" <<'PYEOF' || fail "summary.json"
import json, math, sys
s = json.load(open(sys.argv[1]))
for key in ["rm_eval_accuracy", "gold_win_rate_vs_sft", "kl_to_sft", "gold_reward_sft", "gold_reward_final"]:
    v = s[key]
    assert isinstance(v, (int, float)) and math.isfinite(v), (key, v)
assert 0.0 <= s["rm_eval_accuracy"] <= 1.0
assert 0.0 <= s["gold_win_rate_vs_sft"] <= 1.0
# every iteration was evaluated on the held-out prompts (EVAL_EACH=1): the best
# iteration is named and the final policy compared with it
its = s["iterations"]
assert len(its) == 2 and all(i["held_out"] and math.isfinite(i["held_out"]["kl_to_sft"]) for i in its), its
b = s["best_iteration"]
assert b and b["iteration"] in (1, 2) and b["final_within_noise"] in (True, False), b
print("e2e: summary", {k: s[k] for k in ["rm_eval_accuracy", "gold_win_rate_vs_sft", "kl_to_sft"]},
      "best iteration", b["iteration"])
PYEOF
# the stages streamed their metrics (pipelines pass --live-metrics/--tensorboard through
# RLHF_LIVE_METRICS/RLHF_TENSORBOARD): TensorBoard's reader sees every row, step by step
"$PY" tests/live_metrics.py "$run" || fail "live metrics (TensorBoard, Parquet parts)"
for f in data/prompts.parquet sft/config.json rm/adapter_config.json iter-001/rollouts.parquet \
         iter-002/policy/adapter_config.json final/merged/config.json report/summary.html; do
  [ -e "$run/$f" ] || fail "missing $f"
done

# --- 1b. the PERL table (pipelines/demo-perl.mk): full reward model and full policy ------
echo "e2e: micro demo-perl in $tmp/perl-table" >&2
make --no-print-directory -f pipelines/demo-perl.mk BIN="$BIN" RUN="$tmp/perl-table" CONF="$conf" \
  ITERATIONS=2 THREADS=2 LIVE= >"$tmp/demo-perl.log" 2>&1 || { tail -50 "$tmp/demo-perl.log"; fail "demo-perl pipeline"; }
"$PY" - "$tmp/perl-table/report/summary.json" <<'PYEOF' || fail "demo-perl summary.json"
import json, sys
p = json.load(open(sys.argv[1]))["perl"]
for arm in ["rm_lora", "rm_full", "policy_lora", "policy_full"]:
    v = p[arm]
    assert v and v["quality"] is not None and v["peak_rss_bytes"] and v["seconds_per_step"], (arm, v)
for stage in ["rm", "policy"]:
    lora, full = p[stage + "_lora"], p[stage + "_full"]
    assert full["trainable_params"] > 10 * lora["trainable_params"], (stage, lora, full)
    # weights, gradients and two AdamW moments in f32: 16 bytes a trained parameter
    for v in (lora, full):
        assert v["trained_state_bytes"] == 16 * v["trainable_params"], (stage, v)
# the full policy's held-out KL comes from --ref-model (the SFT model): taken from the
# policy itself it would be exactly 0 (a micro run's sampled estimate may be < 0)
assert p["policy_full"]["kl_to_sft"] != 0.0, p["policy_full"]
print("e2e: demo-perl", {a: round(p[a]["quality"], 3) for a in ["rm_lora", "rm_full", "policy_lora", "policy_full"]})
PYEOF
grep -q "PERL paper" "$tmp/perl-table/report/summary.md" || fail "demo-perl report has no side-by-side table"

# --- 2. caching ----------------------------------------------------------------------
"${mk[@]}" -q || fail "a rerun with everything built would run something"
sleep 1
touch "$conf/rm.toml"
planned=$("${mk[@]}" -n | grep -oE '^scripts/timed.sh [^ ]+ [a-z0-9-]+' | awk '{print $3}' | sort -u | tr '\n' ' ')
echo "e2e: after touching rm.toml make would run: $planned" >&2
[[ " $planned " == *" train-rm-lora "* ]] || fail "rm config change does not retrain the reward model"
for stage in prep-data init-model train-sft sample-pairs; do
  [[ " $planned " != *" $stage "* ]] || fail "rm config change reruns $stage"
done

# --- 2b. the stage contract (exit codes, outputs vs inputs, part folders, signals) -------
bash tests/contract.sh "$run" "$BIN" "$PY" || fail "stage contract"

# --- 2c. one TOML file for the whole run (CONFIG=) gives the same weights ---------------
one=$tmp/one.toml
echo "# the micro demo in one file: a table per stage" >"$one"
for f in "$conf"/*.toml; do printf '\n[%s]\n' "$(basename "$f" .toml)"; cat "$f"; done >>"$one"
make --no-print-directory -f pipelines/demo.mk BIN="$BIN" RUN="$tmp/one" CONFIG="$one" ITERATIONS=2 THREADS=2 \
  "$tmp/one/rm/metrics.parquet" >"$tmp/one.log" 2>&1 || { tail -30 "$tmp/one.log"; fail "demo with CONFIG=$one"; }
cmp -s "$run/sft/model.safetensors" "$tmp/one/sft/model.safetensors" || fail "CONFIG=one file: other SFT weights"
cmp -s "$run/rm/adapter_model.safetensors" "$tmp/one/rm/adapter_model.safetensors" || fail "CONFIG=one file: other reward adapter"
echo "e2e: one TOML file (CONFIG=) gives the same SFT and reward-model weights as the per-stage files" >&2

# --- 2d. the resolved settings each trainer writes (run_config.toml) rerun the same run --
"$BIN/train-sft" -q --no-progress --threads 2 --config "$run/sft/run_config.toml" --out "$tmp/sft-again" \
  || fail "train-sft --config sft/run_config.toml"
cmp -s "$run/sft/model.safetensors" "$tmp/sft-again/model.safetensors" || fail "run_config.toml: other SFT weights"
"$BIN/ppo-update" -q --no-progress --threads 2 --config "$run/iter-002/policy/run_config.toml" \
  --out "$tmp/ppo-again" >/dev/null || fail "ppo-update --config iter-002/policy/run_config.toml"
cmp -s "$run/iter-002/policy/adapter_model.safetensors" "$tmp/ppo-again/adapter_model.safetensors" \
  || fail "run_config.toml: other policy adapter"
"$BIN/train-rm-lora" --print-config --config "$run/rm/run_config.toml" --out "$tmp/x" \
  | grep '^lora-rank = 4$' >/dev/null || fail "--print-config of rm/run_config.toml"
echo "e2e: run_config.toml in sft/ and iter-002/policy/ reruns to the same weights" >&2
# Every output's lineage records the resolved settings too: score-rewards rerun from the
# settings in the footer of iter-001/scores.parquet gives the same table.
"$PY" - "$run/iter-001/scores.parquet" "$tmp/scores.toml" <<'PYEOF' || fail "the lineage of scores.parquet has no config"
import json, sys
import pyarrow.parquet as pq
lineage = json.loads(pq.read_metadata(sys.argv[1]).metadata[b"rlhf.lineage"])
assert "[score-rewards]" in lineage["config"], lineage.get("config")
open(sys.argv[2], "w").write(lineage["config"])
PYEOF
"$BIN/score-rewards" -q --no-progress --threads 2 --config "$tmp/scores.toml" --out "$tmp/scores-again.parquet" \
  || fail "score-rewards --config <lineage config>"
"$PY" - "$run/iter-001/scores.parquet" "$tmp/scores-again.parquet" <<'PYEOF' || fail "lineage config: other scores"
import sys
import pyarrow.parquet as pq
assert pq.read_table(sys.argv[1]).equals(pq.read_table(sys.argv[2]))
PYEOF
echo "e2e: the settings in scores.parquet's lineage rerun score-rewards to the same scores" >&2

# --- 3. real-data pipeline on a transformers-made model -------------------------------
model=$tmp/hf-model
"$PY" scripts/make_tiny_hf_model.py --tokenizer-dir "$run/model" --out "$model"
echo "e2e: perl.mk on $model with HH-RLHF fixtures" >&2
make --no-print-directory -f pipelines/perl.mk BIN="$BIN" RUN="$tmp/perl" CONF=tests/e2e/perl \
  MODEL="$model" DATA=tests/fixtures/hh_rlhf_sample.jsonl FORMAT=hh-rlhf ITERATIONS=1 THREADS=2 \
  >"$tmp/perl.log" 2>&1 || { tail -50 "$tmp/perl.log"; fail "perl pipeline"; }
[ -e "$tmp/perl/report/summary.json" ] || fail "perl pipeline wrote no summary"
# --- 4. ppo-update --full and the stages after it -------------------------------------
full=$tmp/full
g=(-q --no-progress --threads 2 --device cpu)
echo "e2e: ppo-update --full on $run/sft" >&2
"$BIN/ppo-update" "${g[@]}" --full --model "$run/sft" --ref-model "$run/sft" --algo ppo \
  --rollouts "$run/iter-001/rollouts.parquet" --scores "$run/iter-001/scores.parquet" \
  --minibatch-size 8 --out "$full/policy-1" >/dev/null || fail "ppo-update --full"
"$BIN/sample-rollouts" "${g[@]}" --model "$full/policy-1" --no-ref-logprobs \
  --prompts "$run/data/prompts.parquet" --max-prompts 4 --samples-per-prompt 2 \
  --max-new-tokens 8 --iteration 2 --out "$full/rollouts-2.parquet" || fail "sample-rollouts on a --full policy"
"$BIN/score-rewards" "${g[@]}" --model "$run/sft" --reward-model "$run/rm" --rule gold:0 \
  --rollouts "$full/rollouts-2.parquet" --out "$full/scores-2.parquet" || fail "score-rewards on --full rollouts"
"$BIN/ppo-update" "${g[@]}" --full --model "$full/policy-1" --ref-model "$run/sft" --algo ppo \
  --rollouts "$full/rollouts-2.parquet" --scores "$full/scores-2.parquet" --iteration 2 \
  --out "$full/policy-2" >/dev/null || fail "second ppo-update --full"
"$PY" - "$full/policy-2" <<'PYEOF' || fail "the --full output"
import json, os, sys
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import AutoModelForCausalLM
st = json.load(open(os.path.join(sys.argv[1], "training_state.json")))
assert st["full"] and st["iteration"] == 2 and st["optimizer_steps"] >= 2, st
AutoModelForCausalLM.from_pretrained(sys.argv[1])
print("e2e: --full policy after 2 iterations:", st["optimizer_steps"], "optimiser steps")
PYEOF

# --- 5. outcome: the demo configuration learns (thresholds in tests/outcome.sh) ---------
BIN="$BIN" RLHF_PYTHON="$PY" bash tests/outcome.sh || fail "outcome"

echo "e2e: ok" >&2
