#!/usr/bin/env bash
# Outcome test (part of `make test`): the demo pipeline (pipelines/demo.mk, the demo's own
# configuration, 3 policy iterations, seed 0) must learn. It fails when the reward model does
# not learn the oracle or the policy update does not raise the gold reward:
#   - reward-model eval accuracy >= 0.80 (chance is 0.5);
#   - gold win rate of the final policy over the SFT model >= 0.60;
#   - gold reward of the final policy >= the SFT model's + 0.30.
# Margins: seeds 0, 1, 2 at 3 iterations gave accuracy 0.956 / 0.931 / 0.923, win rate
# 0.759 / 0.721 / 0.745, gold gain 0.84 / 0.68 / 0.75 (see the issue notes); with the KL
# budget of pipelines/demo/ppo.toml (2026-12-03) seed 0 gave 0.956, 0.772, gain 0.99, KL 2.56; with
# its learning rate halved to 1e-3 (12 iterations, 2026-12-03, THREADS=1) iteration 3 of seeds
# 0, 1, 2 gave win rate 0.741 / 0.696 / 0.811, gold gain 1.00 / 0.81 / 1.00; with LoRA on the
# LM head too at 5e-4 (2026-12-04, THREADS=2) seed 0 gave 0.956, 0.826, gain 1.18, KL 1.00, and
# iteration 3 of a 12-iteration run 0.844 / 0.716 / 0.783 on seeds 0, 1, 2. A policy update
# with the advantage's sign flipped (ppo-update) gave win rate 0.228 and a gold gain of -0.96 and
# failed here; a reward-model loss with chosen and rejected swapped (rm_loss.rs) gave RM accuracy
# 0.034, win rate 0.219 and a gold gain of -1.02 and failed too.
# Usage: tests/outcome.sh [RUN_DIR] (default: a temporary folder). About 90 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release}
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run=${1:-$tmp/demo}
fail() { echo "outcome FAILED: $*" >&2; exit 1; }

echo "outcome: demo pipeline, 3 iterations, seed 0, in $run" >&2
make --no-print-directory -f pipelines/demo.mk BIN="$BIN" RUN="$run" ITERATIONS=3 SEED=0 \
  THREADS=2 >"$tmp/outcome.log" 2>&1 || { tail -40 "$tmp/outcome.log"; fail "demo pipeline"; }
"$PY" - "$run/report/summary.json" <<'PYEOF' || fail "the pipeline did not learn (figures above)"
import json, sys
s = json.load(open(sys.argv[1]))
figures = {k: round(s[k], 3) for k in
           ["rm_eval_accuracy", "gold_win_rate_vs_sft", "gold_reward_sft", "gold_reward_final", "kl_to_sft"]}
print("outcome:", figures, file=sys.stderr)
bad = []
if not s["rm_eval_accuracy"] >= 0.80:
    bad.append("reward-model eval accuracy %.3f < 0.80" % s["rm_eval_accuracy"])
if not s["gold_win_rate_vs_sft"] >= 0.60:
    bad.append("gold win rate over SFT %.3f < 0.60" % s["gold_win_rate_vs_sft"])
gain = s["gold_reward_final"] - s["gold_reward_sft"]
if not gain >= 0.30:
    bad.append("gold reward gain %.3f < 0.30" % gain)
for b in bad:
    print("outcome:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
echo "outcome: ok" >&2
