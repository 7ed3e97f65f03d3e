#!/usr/bin/env bash
# Keeps pipelines/argo/perl-rlhf.yaml honest: reads the WorkflowTemplate with the project's
# Python (PyYAML), checks that every {{...}} reference names a declared parameter, then walks
# its DAG the way Argo would (dependencies, steps, `when`, withSequence fan-out over shards,
# the recursion over iterations) and runs every script template's source locally, one at a
# time in dependency order, with this repository's binaries on the micro configuration
# (tests/e2e/demo, 2 iterations, 2 shards). Any flag the binaries no longer accept, or a
# stage reading what no earlier stage wrote, fails the test. At the end the run folder must
# hold the report.
#
#   bash tests/argo.sh          # BIN=target/release SHARDS=2; KEEP=1 keeps the temp folder
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=${BIN:-$root/target/release}
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}
tmp=$(mktemp -d /tmp/perl-argo.XXXXXX)
cleanup() {
  local rc=$?
  if [ -n "${KEEP:-}" ] || [ "$rc" != 0 ]; then echo "argo test: files kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
fail() { echo "argo test FAILED: $*" >&2; exit 1; }
"$PY" -c 'import yaml' 2>/dev/null \
  || fail "PyYAML is missing in $PY (it comes with transformers; pin pyyaml in scripts/requirements.txt)"
cp -r tests/e2e/demo "$tmp/conf"

"$PY" - pipelines/argo/perl-rlhf.yaml "$tmp/logs" \
  bin="$BIN" run="$tmp/run" conf="$tmp/conf" iterations=2 shards="${SHARDS:-2}" threads=2 seed=0 \
  checkpoint-every=2 <<'PYEOF' || fail "a step of the Argo template failed (see above)"
import os
import re
import subprocess
import sys
import time

import yaml

path, logdir, *overrides = sys.argv[1:]
doc = yaml.safe_load(open(path))
assert doc["kind"] in ("WorkflowTemplate", "Workflow"), doc["kind"]
spec = doc["spec"]
templates = {t["name"]: t for t in spec["templates"]}
wf_params = {p["name"]: str(p.get("value", "")) for p in spec["arguments"]["parameters"]}
for o in overrides:
    k, v = o.split("=", 1)
    if k not in wf_params:
        sys.exit(f"override {k}: not a workflow parameter ({sorted(wf_params)})")
    wf_params[k] = v
os.makedirs(logdir, exist_ok=True)

REF = re.compile(r"\{\{\s*(.*?)\s*\}\}")

# --- static check: every reference names something declared -------------------------
def refs(node):
    if isinstance(node, str):
        yield from REF.findall(node)
    elif isinstance(node, dict):
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)

problems = []
for name, t in templates.items():
    declared = {p["name"] for p in t.get("inputs", {}).get("parameters", [])}
    for r in refs(t):
        for m in re.findall(r"(inputs|workflow)\.parameters\.([A-Za-z0-9_-]+)", r):
            if m[0] == "inputs" and m[1] not in declared:
                problems.append(f"template {name}: inputs.parameters.{m[1]} is not declared")
            if m[0] == "workflow" and m[1] not in wf_params:
                problems.append(f"template {name}: workflow.parameters.{m[1]} is not declared")
        if r != "item" and not re.search(r"(inputs|workflow)\.parameters\.", r):
            problems.append(f"template {name}: unsupported reference {{{{{r}}}}}")
    for group in t.get("steps", []) + [t.get("dag", {}).get("tasks", [])]:
        for task in group:
            if task["template"] not in templates:
                problems.append(f"template {name}: task {task['name']} calls unknown template {task['template']}")
            callee = templates.get(task["template"], {})
            want = {p["name"] for p in callee.get("inputs", {}).get("parameters", [])}
            given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
            if want != given:
                problems.append(f"template {name}: task {task['name']} passes {sorted(given)}, "
                                f"{task['template']} takes {sorted(want)}")
if problems:
    sys.exit("\n".join(problems))

# --- substitution and `when`, as Argo does them ---------------------------------------
def subst(text, inputs, item=None):
    def one(m):
        r = m.group(1)
        if r == "item":
            if item is None:
                raise SystemExit(f"{{{{item}}}} outside a loop: {text!r}")
            return str(item)
        e = re.fullmatch(r"=\s*asInt\((inputs|workflow)\.parameters\.([\w-]+)\)\s*([+-])\s*(\d+)", r)
        if e:
            base = int((inputs if e[1] == "inputs" else wf_params)[e[2]])
            return str(base + int(e[4]) if e[3] == "+" else base - int(e[4]))
        m2 = re.fullmatch(r"(inputs|workflow)\.parameters\.([\w-]+)", r)
        if not m2:
            raise SystemExit(f"unsupported expression {{{{{r}}}}}")
        return (inputs if m2[1] == "inputs" else wf_params)[m2[2]]
    return REF.sub(one, text)

def when_true(expr):
    m = re.fullmatch(r"\s*(-?\d+)\s*(<=|>=|==|!=|<|>)\s*(-?\d+)\s*", expr)
    if not m:
        raise SystemExit(f"unsupported when: {expr!r}")
    a, op, b = int(m[1]), m[2], int(m[3])
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]

def expand(task, inputs):
    """(item, arguments) for each instance of a task (withSequence fans out)."""
    seq = task.get("withSequence")
    items = [None]
    if seq is not None:
        start = int(subst(str(seq.get("start", "0")), inputs))
        if "count" in seq:
            items = list(range(start, start + int(subst(str(seq["count"]), inputs))))
        else:
            items = list(range(start, int(subst(str(seq["end"]), inputs)) + 1))
    for item in items:
        args = {p["name"]: subst(str(p["value"]), inputs, item)
                for p in task.get("arguments", {}).get("parameters", [])}
        yield item, args

ran = []

def run_template(name, inputs, label):
    t = templates[name]
    if "dag" in t:
        tasks = {x["name"]: x for x in t["dag"]["tasks"]}
        done = set()
        while len(done) < len(tasks):
            ready = [n for n, x in tasks.items() if n not in done
                     and all(d in done for d in x.get("dependencies", []))]
            if not ready:
                raise SystemExit(f"{name}: dependency cycle or unknown dependency among {sorted(set(tasks) - done)}")
            for n in ready:  # one at a time, in the template's order
                call(tasks[n], inputs, f"{label}.{n}")
                done.add(n)
    elif "steps" in t:
        for group in t["steps"]:
            for step in group:
                call(step, inputs, f"{label}.{step['name']}")
    elif "script" in t:
        s = t["script"]
        source = subst(s["source"], inputs)
        command = [subst(c, inputs) for c in s["command"]]
        log = os.path.join(logdir, f"{len(ran):03d}-{label.replace('/', '_')}.log")
        script = log[:-4] + ".sh"
        open(script, "w").write(source)
        start = time.time()
        with open(log, "w") as fh:
            rc = subprocess.call(command + [script], stdout=fh, stderr=subprocess.STDOUT)
        ran.append(label)
        print(f"argo test: {label}: exit {rc} in {time.time() - start:.1f}s", file=sys.stderr)
        if rc != 0:
            print(open(log).read()[-3000:], file=sys.stderr)
            raise SystemExit(f"step {label} (template {name}) exited {rc}; script {script}")
    else:
        raise SystemExit(f"template {name}: only dag, steps and script templates are supported")

def call(task, inputs, label):
    if "when" in task and not when_true(subst(task["when"], inputs)):
        return
    for item, args in expand(task, inputs):
        run_template(task["template"], args, label + (f"({item})" if item is not None else ""))

run_template(spec["entrypoint"], {}, spec["entrypoint"])
print(f"argo test: {len(ran)} steps ran", file=sys.stderr)
PYEOF

for f in report/summary.json final/merged/config.json iter-002/policy/adapter_config.json; do
  [ -e "$tmp/run/$f" ] || fail "the Argo steps wrote no $f"
done
if [ "${SHARDS:-2}" -gt 1 ]; then
  n=$(find "$tmp/run/iter-002/rollouts" -name 'part-*.parquet' | wc -l)
  [ "$n" = "${SHARDS:-2}" ] || fail "iter-002/rollouts has $n part files, expected ${SHARDS:-2}"
fi
echo "argo test: ok" >&2
