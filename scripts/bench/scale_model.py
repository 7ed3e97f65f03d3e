#!/usr/bin/env python3
"""Writes a random-weight model folder with the architecture of a real Hub model.

    scale_model.py --size smollm2-135m|qwen2.5-0.5b --out DIR [--layers N] [--seed S]

The config is the published one of that model (dimensions, layers, heads, key/value heads,
vocabulary, rope theta, norm epsilon, tied embeddings, bf16 weights as on the Hub);
`--layers` cuts the depth for smoke tests. transformers writes the folder
(`save_pretrained`: model.safetensors without lm_head, since the embeddings are tied), so the
pipeline loads it as it would the downloaded model.

The tokenizer is our own: a byte-level BPE trained on a small generated corpus, its
vocabulary filled up to the config's size with plain tokens (so that every id a random model
samples decodes), ChatML-style special tokens at the ids the config names, and a ChatML-style
chat template of our own. The figures that depend on the vocabulary (embedding, lm_head,
softmax) are those of the real model; the token ids a text gets are not.

Prints one JSON object on its last stdout line: parameters, vocab_size, seconds.
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit  # noqa: E402

# Published configs (the fields that shape the computation), with the special-token ids
# they name.
CONFIGS = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.041666666666666664,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": 21,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    },
}

# Special tokens of each model, by id.
SPECIALS = {
    "smollm2-135m": {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"},
    "qwen2.5-0.5b": {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"},
}

CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WORDS = (
    "the a of and to in is it that was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound "
    "no most people my over know water than call first who may down side been now find any "
    "new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say "
    "help low line differ turn cause much mean before move right boy old too same tell does "
    "set three want air well also play small end put home read hand port large spell add even"
).split()


def corpus(n=4000, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 20))]
        s = " ".join(words).capitalize() + rng.choice([".", "!", "?", ","])
        out.append(s)
    return out


def tokenizer(size):
    """Byte-level BPE with the config's vocabulary size and special ids."""
    vocab_size = CONFIGS[size]["vocab_size"]
    specials = SPECIALS[size]
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    base.train_from_iterator(corpus(), trainer)
    spec = json.loads(base.to_str())["model"]
    learned = sorted(spec["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    ids = {}
    free = (i for i in range(vocab_size) if i not in specials)
    for token, _ in learned:
        ids[token] = next(free)
    # Fill the rest with plain tokens that decode to " zq<n>" (no merge produces them).
    n = 0
    for i in free:
        while f"\u0120zq{n}" in ids:
            n += 1
        ids[f"\u0120zq{n}"] = i
        n += 1
    for i, t in specials.items():
        ids[t] = i
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials.values()))
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size, tok.get_vocab_size()
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, help="fewer layers (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    start = time.perf_counter()
    torch.manual_seed(a.seed)
    fields = dict(CONFIGS[a.size])
    if a.layers:
        fields["num_hidden_layers"] = a.layers
        fields["max_window_layers"] = min(fields.get("max_window_layers", a.layers), a.layers)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(a.out)
    specials = SPECIALS[a.size]
    by_id = lambda i: specials[fields[i]]  # noqa: E731
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer(a.size),
        bos_token=by_id("bos_token_id"),
        eos_token=by_id("eos_token_id"),
        pad_token=by_id("pad_token_id"),
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(a.out)
    emit(
        {
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": fields["vocab_size"],
            "seconds": time.perf_counter() - start,
        }
    )


if __name__ == "__main__":
    main()
