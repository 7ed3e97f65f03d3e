#!/usr/bin/env bash
# label-pairs in a real browser: headless Chromium driven over the W3C WebDriver protocol
# (chromedriver, curl, jq). It serves a fixture whose responses (and one prompt) carry
# <script> and <img onerror>, labels pairs with the keyboard and the mouse, undoes one,
# exports, and checks that the Parquet file holds exactly those answers, that the hostile
# texts were shown as text and ran nothing, and that a request without the token gets 403.
#
# Needs: chromium, chromium-driver, jq, curl (Debian packages) and the project's Python
# (pyarrow). Run by .ci/run after `make test`; by hand: `bash tests/label-browser.sh`
# (builds label-pairs when target/release/label-pairs is missing). LABEL_SCREENSHOT=FILE
# also saves a screenshot of the page.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
for tool in "$CHROMIUM" "$CHROMEDRIVER" jq curl; do
  command -v "$tool" >/dev/null || { echo "label-browser: $tool not found (apt-get install chromium chromium-driver jq curl)" >&2; exit 1; }
done
[ -x "$BIN/label-pairs" ] || scripts/cargo.sh build --release -p label-pairs
PY=${RLHF_PYTHON:-$(scripts/setup-python.sh)/bin/python}

work=$(mktemp -d)
server_pid= driver_pid= session=
cleanup() {
  if [ -n "$session" ]; then curl -s -X DELETE "$WD/session/$session" >/dev/null || true; fi
  for pid in $server_pid $driver_pid; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "label-browser: FAIL: $*" >&2; exit 1; }
step() { echo "label-browser: $*" >&2; }

SCRIPT_XSS='<script>window.__pwned=1</script>'
IMG_XSS='<img src=x onerror="window.__pwned=1">'

# --- fixture: six prompts, two samples each (six pairs); prompt 0 and its responses are hostile
"$PY" - "$work/rollouts.parquet" "$SCRIPT_XSS" "$IMG_XSS" <<'EOF'
import sys, pyarrow as pa, pyarrow.parquet as pq
out, script_xss, img_xss = sys.argv[1:4]
rows = []
for p in range(6):
    prompt = f"User: review item {p}\nAssistant:"
    texts = [f"answer {p}a, calm", f"answer {p}b, longer and warmer"]
    if p == 0:
        prompt = f"User: {img_xss} review item 0\nAssistant:"
        texts = [script_xss, img_xss]
    for k, text in enumerate(texts):
        rows.append(dict(rollout_id=f"r{p}-{k}", prompt_id=f"prompt-{p}", iteration=0, sample_index=k,
                         prompt=prompt, response=text, prompt_tokens=[1, 2, p], response_tokens=[3 + k],
                         logprobs=[-0.5], ref_logprobs=None, finish_reason="eos", policy_id="base", seed=1))
schema = pa.schema([
    ("rollout_id", pa.string()), ("prompt_id", pa.string()), ("iteration", pa.int32()),
    ("sample_index", pa.int32()), ("prompt", pa.string()), ("response", pa.string()),
    ("prompt_tokens", pa.list_(pa.int32())), ("response_tokens", pa.list_(pa.int32())),
    ("logprobs", pa.list_(pa.float32())), ("ref_logprobs", pa.list_(pa.float32())),
    ("finish_reason", pa.string()), ("policy_id", pa.string()), ("seed", pa.uint64()),
])
pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)
EOF

# --- the server
"$BIN/label-pairs" serve --rollouts "$work/rollouts.parquet" --out "$work/labels" \
  --bind 127.0.0.1:0 --seed 3 2>"$work/server.log" &
server_pid=$!
url=
for _ in $(seq 100); do
  url=$(grep -o 'http://[^ ]*' "$work/server.log" || true)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; fail "label-pairs serve exited"; }
  sleep 0.1
done
[ -n "$url" ] || fail "no address in the server's log"
base=${url%%/\?token=*}
token=${url##*token=}

# --- requests without the token are refused
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/")
[ "$code" = 403 ] || fail "GET / without the token gave $code, expected 403"
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/next?labeller=tester&token=not-$token")
[ "$code" = 403 ] || fail "a wrong token gave $code, expected 403"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "$base/api/undo?labeller=tester")
[ "$code" = 403 ] || fail "POST without the token gave $code, expected 403"
step "requests without the token: 403"

# --- headless Chromium through chromedriver
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CHROMEDRIVER" --port="$port" >"$work/chromedriver.log" 2>&1 &
driver_pid=$!
WD="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -s "$WD/status" | jq -e '.value.ready' >/dev/null 2>&1 && break
  sleep 0.1
done
wd() { # METHOD PATH [JSON]: one WebDriver command; prints .value, fails on an error
  local reply
  if [ $# -ge 3 ]; then
    reply=$(curl -sS -X "$1" -H 'Content-Type: application/json' -d "$3" "$WD$2")
  else
    reply=$(curl -sS -X "$1" "$WD$2")
  fi
  if echo "$reply" | jq -e '.value.error? // empty' >/dev/null 2>&1; then
    fail "WebDriver $1 $2: $(echo "$reply" | jq -c .value)"
  fi
  echo "$reply" | jq -c '.value'
}
caps=$(jq -n --arg bin "$CHROMIUM" --arg dir "$work/profile" '{capabilities: {alwaysMatch: {
  browserName: "chrome", "goog:chromeOptions": {binary: $bin, args: ["--headless", "--no-sandbox",
  "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--window-size=1280,900",
  ("--user-data-dir=" + $dir)]}}}}')
session=$(wd POST /session "$caps" | jq -r '.sessionId')
[ -n "$session" ] && [ "$session" != null ] || fail "no WebDriver session"
S="/session/$session"

js() { # SCRIPT: runs it in the page, prints its JSON value
  wd POST "$S/execute/sync" "$(jq -n --arg s "$1" '{script: $s, args: []}')"
}
wait_for() { # JS-EXPRESSION: polls until true (10 s)
  for _ in $(seq 100); do
    [ "$(js "return Boolean($1);")" = true ] && return 0
    sleep 0.1
  done
  fail "timed out waiting for: $1 (page: $(js 'return document.body.dataset;'))"
}
key() { # KEY: presses and releases one key
  wd POST "$S/actions" "$(jq -n --arg k "$1" '{actions: [{type: "key", id: "kb", actions: [
    {type: "keyDown", value: $k}, {type: "keyUp", value: $k}]}]}')" >/dev/null
}
click() { # CSS-SELECTOR: a real mouse click on the element
  local el
  el=$(wd POST "$S/element" "$(jq -n --arg v "$1" '{using: "css selector", value: $v}')" | jq -r '.[]')
  wd POST "$S/element/$el/click" '{}' >/dev/null
}
type_into() { # CSS-SELECTOR TEXT
  local el
  el=$(wd POST "$S/element" "$(jq -n --arg v "$1" '{using: "css selector", value: $v}')" | jq -r '.[]')
  wd POST "$S/element/$el/value" "$(jq -n --arg t "$2" '{text: $t}')" >/dev/null
}

wd POST "$S/url" "$(jq -n --arg u "$url&labeller=tester" '{url: $u}')" >/dev/null
wait_for "document.body.dataset.state === 'ready'"
if [ -n "${LABEL_SCREENSHOT:-}" ]; then
  wd GET "$S/screenshot" | jq -r . | base64 -d >"$LABEL_SCREENSHOT"
  step "screenshot: $LABEL_SCREENSHOT"
fi

# Each step: check the page ran nothing, note the pair and what it shows, answer.
expected="$work/expected.jsonl"
: >"$expected"
xss_seen=0
answered=0
shown() { js "return {pair: document.body.dataset.pair, left: document.getElementById('left').textContent,
  right: document.getElementById('right').textContent, prompt: document.getElementById('prompt-box').textContent};"; }
check_safe() {
  local safe
  safe=$(js "return [typeof window.__pwned, document.querySelectorAll('main img, main script, #prompt-box *:not(div):not(pre)').length];")
  [ "$safe" = '["undefined",0]' ] || fail "the page ran or built markup from a response: $safe"
  local s
  s=$(shown)
  if echo "$s" | jq -e --arg a "$SCRIPT_XSS" --arg b "$IMG_XSS" \
       '([.left, .right] | sort) == ([$a, $b] | sort) and (.prompt | contains($b))' >/dev/null; then
    xss_seen=1
  fi
}
answer() { # HOW CHOICE [REASON]: HOW is key:K or click:SELECTOR
  check_safe
  local s
  s=$(shown)
  if [ -n "${3:-}" ]; then type_into '#reason' "$3"; fi
  case $1 in
    key:*) key "${1#key:}" ;;
    click:*) click "${1#click:}" ;;
  esac
  answered=$((answered + 1))
  echo "$s" | jq -c --arg c "$2" --arg r "${3:-}" '. + {choice: $c, reason: (if $r == "" then null else $r end)}' >>"$expected"
  wait_for "document.body.dataset.answered === '$answered' && ['ready', 'done'].includes(document.body.dataset.state)"
}

answer key:1 left
answer $'key:\ue014' right                 # ArrowRight
answer click:#btn-equal equal
answer click:#btn-left left
# Undo the last answer with the keyboard: the same pair comes back; answer it again by mouse.
undone=$(jq -r '.pair' <(tail -n 1 "$expected"))
key u
wait_for "document.body.dataset.undone === '$undone' && document.body.dataset.state === 'ready' && document.body.dataset.pair === '$undone'"
sed -i '$d' "$expected"
answer click:#btn-right right 'warmer <b>tone</b>'
answer key:c cant_tell
answer key:s skip
wait_for "document.body.dataset.state === 'done'"
check_safe
[ "$xss_seen" = 1 ] || fail "the hostile pair was never shown verbatim as text"
step "labelled 6 pairs (keyboard and mouse), undid one; hostile texts shown as text, window.__pwned undefined"

kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=
[ "$rc" = 143 ] || fail "serve exited $rc on SIGTERM, expected 143"

# --- export and compare with what was clicked and typed
"$BIN/label-pairs" export --in "$work/labels" --out "$work/prefs.parquet" \
  --summary-json "$work/summary.json" 2>"$work/export.log" || { cat "$work/export.log" >&2; fail "export failed"; }
"$PY" - "$work/prefs.parquet" "$expected" "$work/summary.json" <<'EOF'
import json, sys, pyarrow.parquet as pq
prefs, expected_path, summary_path = sys.argv[1:4]
rows = pq.read_table(prefs).to_pylist()
expected = [json.loads(l) for l in open(expected_path)]
kept = [e for e in expected if e["choice"] in ("left", "right", "equal")]
assert len(rows) == len(kept) == 4, (len(rows), len(kept))
for row, e in zip(rows, kept):
    assert row["group_id"] == e["pair"], (row["group_id"], e["pair"])
    assert row["labeller"] == "tester" and row["reason"] == e["reason"], row
    if e["choice"] == "equal":
        assert row["label"] == 0.5 and row["chosen_side"] is None, row
        assert sorted([row["chosen"], row["rejected"]]) == sorted([e["left"], e["right"]]), row
    else:
        chosen, rejected = (e["left"], e["right"]) if e["choice"] == "left" else (e["right"], e["left"])
        assert (row["chosen"], row["rejected"], row["label"], row["chosen_side"]) == (chosen, rejected, 1.0, e["choice"]), (row, e)
summary = json.load(open(summary_path))
m = summary["metrics"]
assert (m["rows"], m["answers"], m["cant_tell"], m["skip"], m["undone"]) == (4, 6, 1, 1, 1), m
print("label-browser: the export holds exactly the 4 preference answers given (1 can't tell, 1 skip, 1 undone counted)", file=sys.stderr)
EOF
echo "label-browser: 1 passed, 0 failed"
