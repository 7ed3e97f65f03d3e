#!/usr/bin/env python3
"""Makes a tiny random Llama with transformers' own save_pretrained (the "user's model
folder" of the real-data pipeline test), reusing a tokenizer folder made by init-model.

    python scripts/make_tiny_hf_model.py --tokenizer-dir runs/x/model --out runs/x/hf-model
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok_cfg = json.loads((args.tokenizer_dir / "tokenizer_config.json").read_text())
    vocab = json.loads((args.tokenizer_dir / "tokenizer.json").read_text())
    vocab_size = len(vocab["model"]["vocab"]) + len(vocab.get("added_tokens", []))
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    ids = {}
    added = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    for key in ("bos_token", "eos_token", "pad_token"):
        tok = tok_cfg.get(key)
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok in added:
            ids[key.replace("_token", "_token_id")] = added[tok]
    for k, v in ids.items():
        setattr(cfg, k, v)
    model = LlamaForCausalLM(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = args.tokenizer_dir / name
        if src.exists():
            shutil.copy(src, args.out / name)


if __name__ == "__main__":
    main()
