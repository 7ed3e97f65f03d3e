"""Reference for the rlhf-bench case sampling: transformers' generate with sampling on the
same saved model, batch, prompt length, new tokens and threads.

Usage: python scripts/bench/sampling.py --model DIR --batch 16 --prompt-len 64 --new 128 --threads 2 [--repeats 3]
       [--device cuda] [--dtype bf16]   (scripts/gpu-check.sh)
Prints {"tokens_per_s": best of the timed runs, "runs": [tokens/s of each], "transformers_version": ...}.
"""

import argparse
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

from common import emit


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="HF model folder written by rlhf-bench")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--prompt-len", type=int, required=True)
    ap.add_argument("--new", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs; the best is reported")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).eval().to(args.device)
    vocab = model.config.vocab_size
    ids = torch.tensor(
        [[(i * 131 + j * 17) % (vocab - 3) + 3 for j in range(args.prompt_len)] for i in range(args.batch)]
    ).to(args.device)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        # Warm-up: the whole batch, a few tokens (as the Rust side does).
        model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, **kw)
        runs = []
        for _ in range(max(1, args.repeats)):
            sync()
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new, **kw)
            sync()
            secs = time.perf_counter() - t
            runs.append((out.shape[1] - args.prompt_len) * args.batch / secs)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    emit({"tokens_per_s": max(runs), "runs": runs, "peak_gpu_bytes": peak,
          "transformers_version": transformers.__version__})


if __name__ == "__main__":
    main()
