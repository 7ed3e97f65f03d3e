"""Reference for the rlhf-bench case `rm_step`: reward-model training steps with
transformers + peft on the same base, pairs, batch size and LoRA settings as train-rm-lora.

Usage:
  python scripts/bench/rm_step.py --model DIR --preferences FILE --batch-size B --steps S
      --threads T [--lora-rank R]

The preference pairs are read in file order, B pairs a step: the chosen and rejected
sequences (prompt tokens then response tokens, each encoded with the model's tokenizer.json,
a BOS first where tokenizer_config.json asks for one) right-padded into one batch of 2B, a
LlamaForSequenceClassification with a peft SEQ_CLS LoRA (rank R, alpha 2R, q_proj and
v_proj, no dropout; the score head trained in full), the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected), backward, gradient clipping at 1.0 and torch's AdamW
(lr 1e-3). Timing covers the S steps after loading, the first included, as train-rm-lora's
run/seconds_per_step does. Prints {"seconds_per_step", "tokens_per_step", "peak_rss_bytes",
...}. Float32, CPU.
"""

import argparse
import json
import os
import time

import pyarrow.parquet as pq
import torch

from common import emit, lora_on_q_v, peak_rss_bytes, right_padded

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def encoder(model_dir):
    """(encode(text, bos) -> ids, pad id) from the model folder's tokenizer files."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)

    def token_id(key):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return None if v is None else tok.token_to_id(v)

    bos = token_id("bos_token") if cfg.get("add_bos_token") else None
    pad = token_id("pad_token")
    if pad is None:
        pad = token_id("eos_token")

    def encode(text, with_bos):
        ids = tok.encode(text, add_special_tokens=False).ids
        if with_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    return encode, pad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--preferences", required=True, help="preferences Parquet file")
    ap.add_argument("--batch-size", type=int, required=True, help="pairs per optimiser step")
    ap.add_argument("--steps", type=int, required=True, help="optimiser steps to time")
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encode, pad = encoder(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    base.config.pad_token_id = pad
    model, params = lora_on_q_v(base, "SEQ_CLS", args.lora_rank)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    t = pq.read_table(args.preferences, columns=["prompt", "chosen", "rejected"]).to_pydict()
    pairs = [
        (encode(p, True) + encode(c, False), encode(p, True) + encode(r, False))
        for p, c, r in zip(t["prompt"], t["chosen"], t["rejected"])
    ]
    need = args.steps * args.batch_size
    if len(pairs) < need:
        raise SystemExit(f"{args.preferences}: {len(pairs)} pairs, {need} needed")

    def batch(step):
        ps = pairs[step * args.batch_size:(step + 1) * args.batch_size]
        seqs = [c for c, _ in ps] + [r for _, r in ps]
        ids, mask = right_padded(seqs, pad)
        return ids, mask, sum(len(s) for s in seqs)

    batches = [batch(s) for s in range(args.steps)]
    tokens = 0
    start = time.perf_counter()
    for ids, mask, n in batches:
        scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        half = scores.shape[0] // 2
        loss = -torch.nn.functional.logsigmoid(scores[:half] - scores[half:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += n
    secs = time.perf_counter() - start
    emit({
        "seconds_per_step": secs / args.steps,
        "tokens_per_step": tokens / args.steps,
        "steps": args.steps,
        "peak_rss_bytes": peak_rss_bytes(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    })


if __name__ == "__main__":
    main()
