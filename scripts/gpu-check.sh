#!/usr/bin/env bash
# The GPU check (issue 24), one command for a machine with a CUDA GPU:
#   PERL_RLHF_CUDA=1 make build golden        # a CUDA build (links libtorch_cuda) + fixtures
#   scripts/cargo.sh test --release -p rlhf-nn --test golden --no-run
#   scripts/gpu-check.sh                      # writes runs/gpu/results.json
# Steps:
#  1. the device: libtorch in the binaries sees it (the binaries link libtorch_cuda);
#  2. the golden tests against transformers/peft with the models on the device
#     (RLHF_TEST_DEVICE; f32 within the CPU tolerances, bf16 within 3% of the largest logit);
#  3. the micro demo pipeline on the device, in f32 and in bf16 (every model stage gets
#     --device and --dtype from its config file), each to its report;
#  4. timing: sample-rollouts vs transformers `generate` on the same random-weight model
#     with the configs of SmolLM2-135M and Qwen2.5-0.5B (scripts/bench/scale_model.py),
#     batch sizes a GPU user picks, f32 and bf16.
# Results: OUT/results.json in the format of `make bench` ({"machine", "cases"}) plus each
# step's log in OUT/. `--device cpu --quick` runs the same steps small on the CPU: make test
# does that (tests/gpu_check.sh), so the script stays runnable between GPU sessions.
#
# Usage: scripts/gpu-check.sh [--device cuda|cuda:N|cpu] [--out DIR] [--quick]
#   BIN (env, default target/release), RLHF_PYTHON (env, default the project's environment)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
device=cuda
out=runs/gpu
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${BIN:-$root/target/release}
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
GOLDEN=${RLHF_GOLDEN_DIR:-$root/tests/fixtures/generated}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cases=$out/cases.jsonl
: >"$cases"
fail() { echo "gpu-check FAILED: $*" >&2; exit 1; }
step() { echo "gpu-check: $*" >&2; }
case_line() { # name value unit [reference reference_value higher_is_better]
  "$PY" - "$@" >>"$cases" <<'PYEOF'
import json, sys
a = sys.argv[1:]
row = {"name": a[0], "value": float(a[1]), "unit": a[2], "reference": None, "reference_value": None, "ratio": None}
if len(a) > 3:
    row["reference"], row["reference_value"] = a[3], float(a[4])
    ours, ref = row["value"], row["reference_value"]
    row["ratio"] = (ours / ref if a[5] == "1" else ref / ours) if ours > 0 and ref > 0 else None
print(json.dumps(row))
PYEOF
}

# --- 1. the device -----------------------------------------------------------------------
step "device $device, binaries in $BIN"
if [[ $device == cuda* ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
  ldd "$BIN/sample-rollouts" | grep -q libtorch_cuda ||
    fail "$BIN/sample-rollouts does not link libtorch_cuda: build with PERL_RLHF_CUDA=1 make build"
fi

# --- 2. golden tests on the device -------------------------------------------------------
golden=$(ls -t "$root"/target/release/deps/golden-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -x "$golden" ] || fail "no golden test binary in target/release/deps: scripts/cargo.sh test --release -p rlhf-nn --test golden --no-run"
[ -f "$GOLDEN/reference.json" ] || fail "no golden fixtures in $GOLDEN: make golden"
step "golden tests (transformers/peft) with the models on $device"
RLHF_TEST_DEVICE=$device RLHF_GOLDEN_DIR=$GOLDEN RLHF_PYTHON=$PY "$golden" --test-threads 1 >"$out/golden.log" 2>&1 ||
  { tail -30 "$out/golden.log" >&2; fail "golden tests on $device"; }
grep -E "^test result" "$out/golden.log" >&2

# --- 3. the micro demo on the device, f32 and bf16 ----------------------------------------
for dtype in f32 bf16; do
  conf=$out/conf-$dtype
  rm -rf "$conf" "$out/demo-$dtype"
  cp -r tests/e2e/demo "$conf"
  for stage in sft pairs rm sample score ppo eval merge; do
    printf 'device = "%s"\ndtype = "%s"\n' "$device" "$dtype" >>"$conf/$stage.toml"
  done
  step "micro demo, --device $device --dtype $dtype"
  make --no-print-directory -f pipelines/demo.mk BIN="$BIN" RUN="$out/demo-$dtype" CONF="$conf" \
    ITERATIONS=2 THREADS=2 LIVE= >"$out/demo-$dtype.log" 2>&1 ||
    { tail -40 "$out/demo-$dtype.log" >&2; fail "micro demo on $device in $dtype"; }
  [ -f "$out/demo-$dtype/report/summary.json" ] || fail "micro demo in $dtype wrote no report"
  secs=$(awk -F'"seconds": ' '{ split($2, a, "}"); s += a[1] } END { printf "%.2f", s }' "$out/demo-$dtype/timings.jsonl")
  case_line "micro_demo_seconds_$dtype" "$secs" s
done

# --- 4. timing: sample-rollouts vs transformers generate ---------------------------------
prompts=$out/demo-f32/data/prompts.parquet
if [ "$quick" = 1 ]; then shapes="smollm2-135m"; batches="8"; new=16; else shapes="smollm2-135m qwen2.5-0.5b"; batches="32 256"; new=128; fi
for shape in $shapes; do
  model=$out/model-$shape
  # the published config (vocabulary included), random weights; --quick: 2 layers
  "$PY" scripts/bench/scale_model.py --size "$shape" --out "$model" $([ "$quick" = 1 ] && echo --layers 2) >/dev/null ||
    fail "writing the $shape model"
  for dtype in f32 bf16; do
    for b in $batches; do
      k=$(( b > 8 ? 8 : b ))
      prompts_n=$(( b / k ))
      step "timing $shape $dtype batch $b: sample-rollouts"
      "$BIN/sample-rollouts" -q --no-progress --model "$model" --prompts "$prompts" --max-prompts "$prompts_n" \
        --samples-per-prompt "$k" --batch-size "$b" --pack-prompts --max-new-tokens "$new" --no-ref-logprobs \
        --device "$device" --dtype "$dtype" --out "$out/timing.parquet" --summary-json "$out/timing.json" ||
        fail "sample-rollouts on $shape $dtype batch $b"
      ours=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1]))['details']; print(d['response_tokens_per_second'])" "$out/timing.json")
      step "timing $shape $dtype batch $b: transformers generate"
      ref=$(cd scripts/bench && "$PY" sampling.py --model "$model" --batch "$b" --prompt-len 32 --new "$new" \
        --threads 2 --device "$device" --dtype "$dtype" | tail -1 |
        "$PY" -c "import json,sys; print(json.loads(sys.stdin.read())['tokens_per_s'])")
      case_line "sampling_${shape}_${dtype}_b${b}" "$ours" tokens/s "transformers generate" "$ref" 1
    done
  done
done

"$PY" - "$cases" "$out/results.json" "$device" <<'PYEOF'
import json, platform, sys
import torch
cases = [json.loads(l) for l in open(sys.argv[1])]
dev = sys.argv[3]
machine = {"cpu_model": platform.processor() or platform.machine(), "device": dev,
           "torch_version": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") and torch.cuda.is_available() else None}
json.dump({"machine": machine, "cases": cases}, open(sys.argv[2], "w"), indent=1)
for c in cases:
    ratio = f"  x{c['ratio']:.2f} vs {c['reference']}" if c["ratio"] else ""
    print(f"{c['name']:<40} {c['value']:>12.2f} {c['unit']}{ratio}")
PYEOF
step "results in $out/results.json"
