#!/usr/bin/env python3
"""Golden fixtures for rlhf-nn: tiny random models built with transformers, PEFT adapters
built with peft, and reference outputs (logits, greedy tokens, scores, merged weights).

    make_golden.py --out DIR                 build every fixture into DIR (about 10 s)
    make_golden.py peft-logits --base B --adapter A --inputs F --out O [--seq-cls]
                                             logits (or scores) of base B + PEFT adapter A on
                                             the input_ids/attention_mask in F, written to O
                                             (used by the Rust test that checks our adapters
                                             load in peft)

Layout of DIR: one HF model folder per model (llama_gqa, qwen2_tied, gpt2, llama_seqcls),
PEFT adapter folders (llama_gqa_lora, gpt2_lora, llama_seqcls_lora), reference.safetensors
(inputs, logits, scores, merged weights; keys `<case>.<what>`) and reference.json (greedy
prompts and tokens, tolerances). Deterministic: fixed seeds, CPU, float32.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

# One thread: with two, GPT-2's tanh GELU (inside `peft-logits`' forward) gave other bits on
# the same input in 9 of 300 forked processes (the logits then differed from ours by 5.3e-4
# against the usual 1.8e-5, over the test's 2e-4); with one thread 300 and then 800 of 800 gave
# the usual bits. Which torch op varies was not isolated.
torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
)

transformers.logging.set_verbosity_error()

VOCAB = 128
PAD = 0
MAX_NEW = 12
# Logit tolerance stated for the Rust tests (float32, different kernels): absolute.
LOGIT_ATOL = 2e-4


def spread_init(model, seed, std):
    """Re-initialise weights with a larger std so next-token distributions are peaked
    (greedy decoding then has clear margins, and small kernel differences cannot flip it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                big = any(k in name for k in ("lm_head", "embed_tokens", "wte"))
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if big else std))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm weights
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[2, 7:] = PAD  # right padding in the last row
    mask[2, 7:] = 0
    return ids, mask


def prompts():
    g = torch.Generator().manual_seed(11)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (5, 9, 3)]


def greedy(model, ps):
    """Greedy continuations: each prompt alone, and the batch left-padded."""
    alone = []
    margins = []
    for p in ps:
        out = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=None,
            output_scores=True,
            return_dict_in_generate=True,
        )
        alone.append(out.sequences[0, len(p):].tolist())
        for s in out.scores:
            top = s[0].float().topk(2).values
            margins.append(float(top[0] - top[1]))
    width = max(len(p) for p in ps)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                         pad_token_id=PAD, eos_token_id=None)
    batched = out[:, width:].tolist()
    return alone, batched, min(margins)


def save(model, path):
    model.save_pretrained(path, safe_serialization=True)


def build(out):
    from peft import LoraConfig, PeftModel, get_peft_model

    os.makedirs(out, exist_ok=True)
    ref = {}
    meta = {"logit_atol": LOGIT_ATOL, "max_new_tokens": MAX_NEW, "pad_id": PAD, "prompts": prompts(), "cases": {}}
    ids, mask = inputs()
    ref["input_ids"] = ids
    ref["attention_mask"] = mask

    def record(case, model, kind="lm"):
        model.eval()
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=mask)
        key = "logits" if kind == "lm" else "scores"
        ref[f"{case}.{key}"] = o.logits.float().contiguous() if kind == "lm" else o.logits[:, 0].float().contiguous()
        entry = {}
        if kind == "lm":
            with torch.no_grad():
                alone, batched, margin = greedy(model, meta["prompts"])
            entry.update(greedy=alone, greedy_batched=batched, greedy_min_margin=margin)
            if margin < 1e-3:
                print(f"warning: {case}: greedy margin {margin:.2e} is small", file=sys.stderr)
        meta["cases"][case] = entry

    # 1. Llama with grouped-query attention and Llama-3 rope scaling, untied embeddings.
    torch.manual_seed(0)
    llama_cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    )
    llama = spread_init(LlamaForCausalLM(llama_cfg), 1, 0.15).eval()
    save(llama, f"{out}/llama_gqa")
    record("llama_gqa", llama)
    # The same weights sharded (model.safetensors.index.json).
    llama.save_pretrained(f"{out}/llama_gqa_sharded", max_shard_size="100KB")

    # 2. Qwen2: q/k/v bias, tied embeddings, GQA.
    qcfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        pad_token_id=PAD, tie_word_embeddings=True, rope_theta=10000.0,
    )
    qwen = spread_init(Qwen2ForCausalLM(qcfg), 2, 0.15)
    qwen.tie_weights()
    qwen.eval()
    save(qwen, f"{out}/qwen2_tied")
    record("qwen2_tied", qwen)

    # 3. GPT-2 (Conv1D weights, fused c_attn, learned positions).
    gcfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD,
                      bos_token_id=1, eos_token_id=2)
    gpt2 = spread_init(GPT2LMHeadModel(gcfg), 3, 0.15).eval()
    save(gpt2, f"{out}/gpt2")
    record("gpt2", gpt2)
    # The bare GPT2Model (names without the `transformer.` prefix; tied head).
    save(gpt2.transformer, f"{out}/gpt2_bare")

    # 4. A sequence-classification model (reward model layout: score.weight [1, hidden]).
    sc = spread_init(LlamaForSequenceClassification(LlamaConfig(**{**llama_cfg.to_dict(), "num_labels": 1})), 4, 0.15).eval()
    save(sc, f"{out}/llama_seqcls")
    record("llama_seqcls", sc, kind="score")

    # 5. PEFT LoRA on the Llama: non-zero B, alpha != r, several modules.
    base = LlamaForCausalLM.from_pretrained(f"{out}/llama_gqa").eval()
    lcfg = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    pm = get_peft_model(base, lcfg)
    nonzero_b(pm, 5)
    pm.save_pretrained(f"{out}/llama_gqa_lora")
    record("llama_gqa_lora", pm)
    merged = pm.merge_and_unload()
    for n, p in merged.state_dict().items():
        if any(t in n for t in ("q_proj.weight", "v_proj.weight", "down_proj.weight")):
            ref[f"llama_gqa_lora.merged.{n}"] = p.detach().contiguous()

    # 6. PEFT LoRA on GPT-2 (fan_in_fan_out for Conv1D).
    gbase = GPT2LMHeadModel.from_pretrained(f"{out}/gpt2").eval()
    gl = get_peft_model(gbase, LoraConfig(r=2, lora_alpha=5, lora_dropout=0.0, target_modules=["c_attn", "c_proj"],
                                          fan_in_fan_out=True, task_type="CAUSAL_LM"))
    nonzero_b(gl, 6)
    gl.save_pretrained(f"{out}/gpt2_lora")
    record("gpt2_lora", gl)
    gmerged = gl.merge_and_unload()
    for n, p in gmerged.state_dict().items():
        if n.endswith("c_attn.weight") or n.endswith("c_proj.weight"):
            ref[f"gpt2_lora.merged.{n}"] = p.detach().contiguous()

    # 7. PEFT SEQ_CLS adapter (LoRA + score head in modules_to_save) on the Llama base.
    sbase = LlamaForSequenceClassification.from_pretrained(f"{out}/llama_gqa", num_labels=1).eval()
    with torch.no_grad():
        sbase.score.weight.copy_(torch.randn(sbase.score.weight.shape, generator=torch.Generator().manual_seed(8)) * 0.3)
    sp = get_peft_model(sbase, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                          task_type="SEQ_CLS"))
    nonzero_b(sp, 7)
    with torch.no_grad():
        w = sp.base_model.model.score.modules_to_save["default"].weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(9)) * 0.3)
    sp.save_pretrained(f"{out}/llama_seqcls_lora")
    record("llama_seqcls_lora", sp, kind="score")

    save_file({k: v.contiguous() for k, v in ref.items()}, f"{out}/reference.safetensors", metadata={"format": "pt"})
    with open(f"{out}/reference.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def nonzero_b(peft_model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sorted(peft_model.named_parameters()):
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def peft_logits(args):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    t = load_file(args.inputs)
    if args.seq_cls:
        base = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=1)
    else:
        base = AutoModelForCausalLM.from_pretrained(args.base)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    with torch.no_grad():
        o = model(input_ids=t["input_ids"].long(), attention_mask=t["attention_mask"].long())
    out = o.logits[:, 0] if args.seq_cls else o.logits
    save_file({"out": out.float().contiguous()}, args.out, metadata={"format": "pt"})


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "peft-logits":
        p = argparse.ArgumentParser(prog="make_golden.py peft-logits")
        p.add_argument("--base", required=True)
        p.add_argument("--adapter", required=True)
        p.add_argument("--inputs", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seq-cls", action="store_true")
        peft_logits(p.parse_args(sys.argv[2:]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    build(p.parse_args().out)


if __name__ == "__main__":
    main()
