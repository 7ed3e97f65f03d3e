"""Reference for the rlhf-bench case `rollouts`: the same work as sample-rollouts and
score-rewards, done with transformers and peft.

Usage:
  python scripts/bench/rollouts.py make-rm --model DIR --out DIR
      a PEFT SEQ_CLS LoRA reward adapter (q_proj, v_proj, score head) on the base
  python scripts/bench/rollouts.py sample --model DIR --rollouts FILE --max-new-tokens N --threads T
      for every prompt group of FILE (the prompts and K that sample-rollouts used): generate K
      samples (temperature 1, no top-k/top-p, EOS stops), then the reference log-probabilities
      of the sampled tokens with one forward pass, as sample-rollouts does.
      Prints {"response_tokens_per_second", "seconds", "response_tokens", "peak_rss_bytes", ...}
  python scripts/bench/rollouts.py score --model DIR --adapter DIR --rollouts FILE --threads T
      the reward adapter's last-token score of every rollout, one right-padded batch per prompt
      group, as score-rewards does on CPU. Prints {"sequences_per_second", "seconds", ...}

Each timing covers the work loop only (model loading excluded), like the --json figures of
the Rust binaries. Float32, CPU.
"""

import argparse
import json
import os
import time

import pyarrow.parquet as pq
import torch

from common import emit, peak_rss_bytes, right_padded

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def special_ids(model_dir):
    """(eos id, pad id) from tokenizer_config.json and tokenizer.json."""
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab = tok["model"].get("vocab", {})

    def lookup(key):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if v is None:
            return None
        return ids.get(v, vocab.get(v) if isinstance(vocab, dict) else None)

    eos = lookup("eos_token")
    pad = lookup("pad_token")
    return eos, pad if pad is not None else eos


def prompt_groups(path):
    """[(prompt_tokens, K)] in file order: runs of rows with one prompt id."""
    t = pq.read_table(path, columns=["prompt_id", "prompt_tokens"]).to_pydict()
    groups = []
    last = None
    for pid, toks in zip(t["prompt_id"], t["prompt_tokens"]):
        if pid == last:
            groups[-1][1] += 1
        else:
            groups.append([toks, 1])
            last = pid
    return groups


def make_rm(args):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    cfg = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.save_pretrained(args.out)
    emit({"adapter": args.out})


def sample(args):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    eos, pad = special_ids(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    groups = prompt_groups(args.rollouts)
    tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for prompt, k in groups:
            ids = torch.tensor([prompt] * k)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            new = out[:, ids.shape[1]:]
            lengths = []
            for row in new.tolist():
                n = len(row)
                if eos in row:
                    n = row.index(eos) + 1
                lengths.append(n)
            tokens += sum(lengths)
            # Reference log-probabilities of the sampled tokens (one forward, as sample-rollouts).
            mask = torch.zeros_like(out)
            for i, n in enumerate(lengths):
                mask[i, : ids.shape[1] + n] = 1
            logits = model(input_ids=out, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, out[:, 1:].unsqueeze(-1)).squeeze(-1)
            _ = (lp * mask[:, 1:]).sum()
    secs = time.perf_counter() - start
    emit({
        "response_tokens_per_second": tokens / secs,
        "response_tokens": tokens,
        "seconds": secs,
        "prompts": len(groups),
        "peak_rss_bytes": peak_rss_bytes(),
        "torch_version": torch.__version__,
    })


def score(args):
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    eos, pad = special_ids(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    base.config.pad_token_id = pad
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    t = pq.read_table(args.rollouts, columns=["prompt_id", "prompt_tokens", "response_tokens"]).to_pydict()
    groups = []
    last = None
    for pid, p, r in zip(t["prompt_id"], t["prompt_tokens"], t["response_tokens"]):
        if pid != last:
            groups.append([])
            last = pid
        groups[-1].append(p + r)
    rows = 0
    start = time.perf_counter()
    with torch.no_grad():
        for seqs in groups:
            ids, mask = right_padded(seqs, pad)
            _ = model(input_ids=ids, attention_mask=mask).logits
            rows += len(seqs)
    secs = time.perf_counter() - start
    emit({
        "sequences_per_second": rows / secs,
        "sequences": rows,
        "seconds": secs,
        "peak_rss_bytes": peak_rss_bytes(),
        "transformers_version": transformers.__version__,
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-rm", help="write a PEFT SEQ_CLS reward adapter")
    m.add_argument("--model", required=True, help="base model folder")
    m.add_argument("--out", required=True, help="adapter folder to write")
    s = sub.add_parser("sample", help="generate + reference log-probabilities")
    s.add_argument("--model", required=True, help="base model folder")
    s.add_argument("--rollouts", required=True, help="rollouts file whose prompt groups to redo")
    s.add_argument("--max-new-tokens", type=int, required=True, help="tokens per response")
    s.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    c = sub.add_parser("score", help="reward adapter scores of every rollout")
    c.add_argument("--model", required=True, help="base model folder")
    c.add_argument("--adapter", required=True, help="PEFT SEQ_CLS adapter folder")
    c.add_argument("--rollouts", required=True, help="rollouts file to score")
    c.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    args = ap.parse_args()
    {"make-rm": make_rm, "sample": sample, "score": score}[args.cmd](args)


if __name__ == "__main__":
    main()
