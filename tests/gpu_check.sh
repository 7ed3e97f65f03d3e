#!/usr/bin/env bash
# scripts/gpu-check.sh stays runnable between GPU sessions (part of `make test`): its steps
# run small on the CPU (--device cpu --quick) - golden tests through RLHF_TEST_DEVICE, the
# micro demo with --device/--dtype in every model stage's config, in f32 and bf16, and the
# timing pass against transformers - and results.json must hold every case with a value.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/gpu-check.sh --device cpu --quick --out "$tmp/gpu" >"$tmp/log" 2>&1 ||
  { tail -40 "$tmp/log" >&2; echo "gpu-check FAILED on the CPU" >&2; exit 1; }
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
"$PY" - "$tmp/gpu/results.json" <<'PYEOF'
import json, math, sys
r = json.load(open(sys.argv[1]))
names = {c["name"] for c in r["cases"]}
want = {"micro_demo_seconds_f32", "micro_demo_seconds_bf16",
        "sampling_smollm2-135m_f32_b8", "sampling_smollm2-135m_bf16_b8"}
assert want <= names, f"missing cases: {sorted(want - names)}"
for c in r["cases"]:
    assert math.isfinite(c["value"]) and c["value"] > 0, c
    if c["name"].startswith("sampling_"):
        assert c["reference_value"] and c["ratio"], c
print(f"gpu-check on the CPU: {len(r['cases'])} cases in results.json")
PYEOF
