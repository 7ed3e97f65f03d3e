"""Shared helpers of the Python reference benchmarks run by rlhf-bench.

Same procedure as crates/rlhf-bench/src/timing.rs: warm-up calls, then trials of enough
calls to fill a minimum duration each; the figure is the fastest trial's time per call.
Each script prints one JSON object on its last stdout line (see emit).
"""

import json
import sys
import time


def budget(quick):
    """(warmup, trials, min_trial_seconds), as Budget::new in timing.rs."""
    return (1, 3, 0.05) if quick else (3, 7, 0.5)


def seconds_per_call(fn, quick):
    """Seconds per call of fn(): the fastest trial."""
    warmup, trials, min_trial = budget(quick)
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-9)
    calls = max(1, int(-(-min_trial // one)))
    per_call = []
    for _ in range(max(1, trials)):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t) / calls)
    return min(per_call)


def emit(result):
    """Prints the result object as the last stdout line."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def peak_rss_bytes():
    """This process's peak resident memory (Linux VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def right_padded(seqs, pad):
    """(ids, attention mask) of token lists right-padded with `pad` to the longest."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def lora_on_q_v(base, task_type, rank):
    """A peft LoRA on q_proj and v_proj (rank, alpha 2 x rank, no dropout) in training mode,
    and its trainable parameters."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        task_type=task_type,
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
    )
    model = get_peft_model(base, cfg).train()
    return model, [p for p in model.parameters() if p.requires_grad]

