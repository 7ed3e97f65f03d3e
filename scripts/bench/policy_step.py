"""Reference for the rlhf-bench case `policy_step`: GRPO policy-update steps with
transformers + peft on the same base, rollouts, scores, minibatches and LoRA settings as
ppo-update.

Usage:
  python scripts/bench/policy_step.py --model DIR --rollouts FILE --scores FILE
      --minibatch-size N --micro-batch-size M --threads T [--beta B] [--lora-rank R]

The rollouts are taken in file order (a prompt's K samples are adjacent, as in ppo-update's
minibatches with --minibatch-by-prompt), N a step, M a forward pass: each pass lays the rows out as TRL does (prompts left-padded, responses
right-padded after them), runs a LlamaForCausalLM with a peft LoRA (rank R, alpha 2R,
q_proj and v_proj, no dropout) with logits for the response positions only
(`logits_to_keep`), takes their log-softmax, and accumulates GRPO's loss (group-normalised advantages from
the scores' `reward`, the clipped ratio against the rollouts' `logprobs`, beta x k3 against
their `ref_logprobs`, a token mean per sequence); then gradient clipping at 1.0 and torch's
AdamW (lr 1e-5). Prints {"fastest_seconds_per_step" (after the first step, as the bench
reads ppo-update's), "seconds_per_step" (mean), "steps", "peak_rss_bytes", ...}. Float32, CPU.
"""

import argparse
import os
import time

import pyarrow.parquet as pq
import torch

from common import emit, lora_on_q_v, peak_rss_bytes

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--rollouts", required=True, help="rollouts Parquet file")
    ap.add_argument("--scores", required=True, help="scores Parquet file (column reward)")
    ap.add_argument("--minibatch-size", type=int, required=True, help="rollouts per optimiser step")
    ap.add_argument("--micro-batch-size", type=int, required=True, help="rollouts per forward pass")
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--beta", type=float, default=0.05, help="KL coefficient")
    ap.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model, params = lora_on_q_v(base, "CAUSAL_LM", args.lora_rank)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    cols = ["rollout_id", "prompt_id", "prompt_tokens", "response_tokens", "logprobs", "ref_logprobs"]
    r = pq.read_table(args.rollouts, columns=cols).to_pydict()
    s = pq.read_table(args.scores, columns=["rollout_id", "reward"]).to_pydict()
    reward = dict(zip(s["rollout_id"], s["reward"]))
    rows = list(zip(r["prompt_id"], r["prompt_tokens"], r["response_tokens"], r["logprobs"],
                    r["ref_logprobs"], [reward[i] for i in r["rollout_id"]]))
    # GRPO advantages: each prompt's rewards normalised by their mean and std.
    by_prompt = {}
    for pid, *_, rw in rows:
        by_prompt.setdefault(pid, []).append(rw)
    stats = {k: (torch.tensor(v).mean().item(), torch.tensor(v).std(unbiased=False).item())
             for k, v in by_prompt.items()}
    adv = [(rw - stats[pid][0]) / (stats[pid][1] + 1e-4) for pid, *_, rw in rows]

    def micro(chunk, advs):
        # As TRL lays a batch out: prompts left-padded, responses right-padded after them,
        # logits only for the response positions (logits_to_keep).
        pw = max(len(p) for _, p, *_ in chunk)
        rw = max(len(resp) for _, _, resp, *_ in chunk)
        b = len(chunk)
        ids = torch.zeros((b, pw + rw), dtype=torch.long)
        mask = torch.zeros((b, pw + rw), dtype=torch.long)
        resp_mask = torch.zeros((b, rw))
        old = torch.zeros((b, rw))
        ref = torch.zeros((b, rw))
        for i, (_, p, resp, lp_old, lp_ref, _) in enumerate(chunk):
            ids[i, pw - len(p): pw] = torch.tensor(p)
            mask[i, pw - len(p): pw] = 1
            ids[i, pw: pw + len(resp)] = torch.tensor(resp)
            mask[i, pw: pw + len(resp)] = 1
            resp_mask[i, : len(resp)] = 1
            old[i, : len(resp)] = torch.tensor(lp_old)
            ref[i, : len(resp)] = torch.tensor(lp_ref)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=rw + 1).logits[:, :-1]
        new = torch.log_softmax(logits, -1).gather(-1, ids[:, pw:].unsqueeze(-1)).squeeze(-1)
        a = torch.tensor(advs).unsqueeze(1)
        ratio = torch.exp(new - old)
        pg = -torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
        d = ref - new
        k3 = torch.exp(d) - d - 1
        per_token = (pg + args.beta * k3) * resp_mask
        per_seq = per_token.sum(1) / resp_mask.sum(1).clamp(min=1)
        return per_seq.sum() / args.minibatch_size

    times = []
    n = len(rows) - len(rows) % args.minibatch_size
    for start in range(0, n, args.minibatch_size):
        t = time.perf_counter()
        for m in range(start, start + args.minibatch_size, args.micro_batch_size):
            end = m + args.micro_batch_size
            micro(rows[m:end], adv[m:end]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    if not times:
        raise SystemExit(f"{args.rollouts}: fewer than {args.minibatch_size} rollouts")
    emit({
        "fastest_seconds_per_step": min(times[1:] or times),
        "seconds_per_step": sum(times) / len(times),
        "steps": len(times),
        "peak_rss_bytes": peak_rss_bytes(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    })


if __name__ == "__main__":
    main()
