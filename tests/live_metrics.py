"""Checks the metrics a pipeline run streamed (--live-metrics, --tensorboard) against the
metrics.parquet files its stages wrote at the end: TensorBoard's own event reader must
return every row, step by step, under `<stage>/iter<NNN>/<metric>` (as float32, the type
TensorBoard stores), and the Parquet parts of each stage run must hold exactly its rows.

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
    for stage, it, step, metric, value in zip(t["stage"], t["iteration"], t["step"], t["metric"], t["value"]):
        by_tag[f"{stage}/iter{it:03d}/{metric}"].append((step, float(np.float32(value))))
        keys.add(f"{stage}.iter{it:03d}")
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
                if f"{st}.iter{it:03d}" == key]
        assert len(got) == len(mine) and all(
            a[0] == b[0] and a[1] == b[1] and same(a[2], b[2]) for a, b in zip(got, mine)
        ), f"{key}: the live parts hold {len(got)} rows, metrics.parquet {len(mine)}"

extra = set(tb) - expected_tags
assert not extra, f"TensorBoard has tags no metrics.parquet holds: {sorted(extra)[:5]}"
print(f"live metrics: {len(finals)} metrics files, {len(expected_tags)} TensorBoard tags, "
      f"{rows_checked} scalars equal step by step; Parquet parts equal")
