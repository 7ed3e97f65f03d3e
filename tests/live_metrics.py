"""Checks the metrics a pipeline run streamed (--live-metrics, --tensorboard) against the
outputs its stages wrote at the end:
- trainers: TensorBoard's own event reader must return every row of each metrics.parquet,
  step by step, under `<stage>/iter<NNN>/<output>/<metric>` (as float32, the type
  TensorBoard stores), and the Parquet parts of each stage run must hold exactly its rows;
- sample-rollouts and score-rewards: the progress they streamed ends at the row count of
  the rollouts or scores file they wrote.

Usage: python tests/live_metrics.py RUN_DIR   (the stream is in RUN_DIR/live)
"""

import collections
import glob
import math
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
live = os.path.join(run, "live")
finals = sorted(
    p for p in glob.glob(os.path.join(run, "**", "metrics.parquet"), recursive=True)
    if not p.startswith(live + os.sep)
)
assert finals, f"no metrics.parquet under {run}"

acc = EventAccumulator(os.path.join(live, "tensorboard"), size_guidance={"scalars": 0})
acc.Reload()
tb = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b

expected_tags = set()
rows_checked = 0
for path in finals:
    t = pq.read_table(path).to_pydict()
    by_tag = collections.defaultdict(list)
    keys = set()
    label = os.path.basename(os.path.dirname(path))  # the trainer's output folder
    for stage, it, step, metric, value in zip(t["stage"], t["iteration"], t["step"], t["metric"], t["value"]):
        by_tag[f"{stage}/iter{it:03d}/{label}/{metric}"].append((step, float(np.float32(value))))
        keys.add(f"{stage}.iter{it:03d}.{label}")
    for tag, want in by_tag.items():
        got = tb.get(tag)
        assert got is not None, f"{path}: tag {tag} missing from TensorBoard (has {sorted(tb)[:8]}...)"
        assert len(got) == len(want) and all(
            gs == ws and same(gv, wv) for (gs, gv), (ws, wv) in zip(got, want)
        ), f"{path}: {tag}: TensorBoard has {got[:5]}... ({len(got)}), metrics.parquet {want[:5]}... ({len(want)})"
        expected_tags.add(tag)
        rows_checked += len(want)
    for key in keys:
        parts = sorted(glob.glob(os.path.join(live, "metrics", f"{key}.part-*.parquet")))
        assert parts, f"{path}: no live parts {key}.part-*.parquet"
        streamed = [pq.read_table(p).to_pydict() for p in parts]
        got = [(s, m, v) for d in streamed for s, m, v in zip(d["step"], d["metric"], d["value"])]
        mine = [(s, m, v) for st, it, s, m, v in zip(t["stage"], t["iteration"], t["step"], t["metric"], t["value"])
                if f"{st}.iter{it:03d}.{label}" == key]
        assert len(got) == len(mine) and all(
            a[0] == b[0] and a[1] == b[1] and same(a[2], b[2]) for a, b in zip(got, mine)
        ), f"{key}: the live parts hold {len(got)} rows, metrics.parquet {len(mine)}"

# sampling and scoring progress: the last streamed count is the output's row count
outputs = collections.defaultdict(set)  # (kind, file stem, iteration) -> row counts
for path in glob.glob(os.path.join(run, "**", "*.parquet"), recursive=True):
    if path.startswith(live + os.sep) or os.path.isdir(path):
        continue
    names = pq.read_schema(path).names
    kind = "rollouts" if "response_tokens" in names else "scores" if "reward" in names else None
    if kind is None:
        continue
    stem = os.path.basename(path)[: -len(".parquet")]
    if "iteration" in names:  # rollouts: the stream's iteration is the rows' iteration
        its = pq.read_table(path, columns=["iteration"]).column("iteration").to_pylist()
        for it in set(its):
            outputs[(kind, stem, it)].add(len(its))
    else:  # scores: the iteration is the scored rollouts'
        outputs[(kind, stem, None)].add(pq.read_metadata(path).num_rows)
progress = {"sample-rollouts": ("rollouts", "sampling/rollouts"), "score-rewards": ("scores", "scoring/rows")}
streamed = 0
for tag, events in tb.items():
    parts = tag.split("/")
    if parts[0] not in progress:
        continue
    kind, metric = progress[parts[0]]
    if "/".join(parts[3:]) != metric:
        continue
    it, stem = int(parts[1][len("iter"):]), parts[2]
    counts = outputs.get((kind, stem, it)) or outputs.get((kind, stem, None))
    assert counts, f"{tag}: no {kind} file {stem}.parquet of iteration {it} in the run"
    assert int(events[-1][1]) in counts, f"{tag} ends at {events[-1][1]}, the {kind} file has {counts} rows"
    expected_tags.update(t for t in tb if t.startswith(f"{parts[0]}/{parts[1]}/{parts[2]}/"))
    streamed += 1
assert streamed >= 2, f"sampling and scoring streamed no progress ({sorted(tb)[:5]})"

extra = set(tb) - expected_tags
assert not extra, f"TensorBoard has tags no output accounts for: {sorted(extra)[:5]}"
print(f"live metrics: {len(finals)} metrics files, {len(expected_tags)} TensorBoard tags, "
      f"{rows_checked} trainer scalars equal step by step, Parquet parts equal; "
      f"{streamed} sampling/scoring streams end at their outputs' row counts")
