#!/usr/bin/env python3
"""Reference for crates/sample-rollouts/tests/tokenizer_families.rs, made with transformers.

    tokenizer_families.py --out DIR

For each case (a tokenizer family of scripts/chat_golden.py with one chat template), saves a
tiny random Llama (transformers' save_pretrained, fp32, fixed seed, vocabulary = the
tokenizer's) beside the tokenizer and its template in DIR/<case>/, then records for every
conversation what transformers does:
  prompt text and ids    apply_chat_template(messages, add_generation_prompt=True), and
                         tok(text) (special tokens added: two BOS where the template wrote one)
  greedy response        generate(do_sample=False, max_new_tokens=MAX_NEW) new tokens,
                         decoded with skip_special_tokens=True (and False, for the test to
                         show that the flag matters)
  stop strings           per case, strings cut from the greedy text across a token boundary;
                         generate(stop_strings=..., tokenizer=tok) with all of them
The forced case makes the model spell a fixed response (accented letters and an emoji that
SentencePiece byte fallback splits into byte tokens, then EOS): the logits of the next chain
token are aligned with the previous token's embedding. Everything goes to DIR/cases.json.
Fails when a greedy step is a near tie (a float rounding could flip it): pick another seed.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

# chat_golden's tokenizer builders; importing it also fixes `strftime_now`'s clock.
import chat_golden  # noqa: E402

MAX_NEW = 20
# Smallest gap between the best and second-best logit of a greedy step.
MIN_MARGIN = 1e-3

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there! What's 12 + 7?"}],
    [{"role": "user", "content": "Caf\u00e9 ou th\u00e9? \U0001F600 na\u00efve"}],
    [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "Yes, 7 is prime."},
        {"role": "user", "content": "And 9?"},
    ],
]

# name, family, template, seed, initializer range, forced response (or None), tokens that end
# generation besides the tokenizer's EOS (the model's eos_token_id list, as Llama-3.1 instruct
# models list <|end_of_text|>, <|eom_id|> and <|eot_id|>)
CASES = [
    ("bpe_bos_llama3", "bpe_bos", "llama3", 11, 0.2, None, ["<|endoftext|>"]),
    ("bpe_nobos_qwen25", "bpe_nobos", "qwen25", 12, 0.2, None, []),
    ("spm_bos_mistral", "spm_bos", "mistral", 13, 0.2, None, []),
    ("spm_bos_zephyr_forced", "spm_bos", "zephyr", 14, 0.02, " Na\u00efve \U0001F600 blue", []),
]


def build_model(tok, seed, init_range, eos_ids):
    vocab = max(tok.get_vocab().values()) + 1
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=init_range,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def force_chain(model, chain):
    """Makes token chain[k+1] the overwhelming greedy choice after chain[k]: the last position's
    hidden state is mostly its own token's embedding (small init), so the lm_head row of the
    next token is set along the previous token's normalised embedding."""
    assert len(set(chain)) == len(chain), f"chain tokens must be distinct: {chain}"
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        for a, b in zip(chain, chain[1:]):
            d = emb[a] / emb[a].norm()
            head[b] = d * 4.0


def greedy(model, tok, ids, stop=None):
    kwargs = dict(stop_strings=stop, tokenizer=tok) if stop else {}
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=model.config.pad_token_id,
        **kwargs,
    )
    new = out.sequences[0, len(ids):].tolist()
    margin = min(float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in out.scores)
    return new, margin


def stop_string(tok, new):
    """A short string of the greedy text that spans a token boundary (two characters either
    side), made of plain characters, whose first occurrence is there; or None."""
    special = set(tok.all_special_ids)
    texts = [tok.decode(new[:k], skip_special_tokens=True) for k in range(len(new) + 1)]
    full = texts[-1]
    order = sorted(range(2, len(new) - 1), key=lambda k: abs(k - len(new) // 2))
    for k in order:
        if new[k - 1] in special or new[k] in special or new[k - 2] in special:
            continue
        b = len(texts[k])
        if not (texts[k + 1].startswith(texts[k]) and texts[k].startswith(texts[k - 1])):
            continue
        if len(texts[k]) - len(texts[k - 1]) < 2 or len(texts[k + 1]) - b < 2:
            continue
        s = full[b - 2: b + 2]
        if s.strip() != s or not all(c.isprintable() and c != "\ufffd" for c in s):
            continue
        if full.find(s) == b - 2:
            return s
    return None


def case_record(out_dir, name, family, template, seed, init_range, forced, extra_eos, fams, templates):
    tok_obj, toks, extra_cfg = fams[family]
    folder = out_dir / name
    chat_golden.save(tok_obj, toks, extra_cfg, folder, templates[template])
    tok = AutoTokenizer.from_pretrained(folder)
    eos_ids = [tok.eos_token_id] + tok.convert_tokens_to_ids(extra_eos)
    model = build_model(tok, seed, init_range, eos_ids)
    prompts = []
    for messages in CONVERSATIONS:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        prompts.append((messages, text, ids))
    if forced is not None:
        # every prompt ends with the same generation prompt: its last token starts the chain
        last = {ids[-1] for _, _, ids in prompts}
        assert len(last) == 1, last
        body = tok(forced, add_special_tokens=False)["input_ids"]
        force_chain(model, [last.pop()] + body + [tok.eos_token_id])
    model.save_pretrained(folder)

    def run(stop):
        rows = []
        for messages, text, ids in prompts:
            new, margin = greedy(model, tok, ids, stop)
            assert margin > MIN_MARGIN, (
                f"{name}: a greedy step of {messages} is a near tie ({margin:.2e}); pick another seed"
            )
            decoded = tok.decode(new, skip_special_tokens=True)
            if new and new[-1] in eos_ids:
                finish = "eos"
            elif stop and any(s in decoded for s in stop):
                finish = "stop"
            else:
                finish = "length"
            rows.append({
                "messages": messages, "prompt": text, "prompt_ids": ids, "text_ids": tok(text)["input_ids"],
                "response_ids": new,
                "response": decoded, "response_all": tok.decode(new, skip_special_tokens=False),
                "finish": finish, "margin": margin,
            })
        return rows

    plain = run(None)
    if forced is not None:
        body = tok(forced, add_special_tokens=False)["input_ids"]
        for r in plain:
            assert r["response_ids"] == body + [tok.eos_token_id], (
                f"{name}: the forced response did not come out: {r['response_ids']} {r['response']!r}"
            )
        # the emoji: four byte-fallback tokens, complete only at the last one
        stops = ["\U0001F600"]
    else:
        stops = [s for s in (stop_string(tok, r["response_ids"]) for r in plain) if s]
        assert stops, f"{name}: no stop string found in {[r['response'] for r in plain]}"
    stopped = run(stops)
    return {
        "name": name, "family": family, "template": template,
        "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "eos_ids": eos_ids,
        "forced": forced, "max_new_tokens": MAX_NEW,
        "runs": [{"stop": [], "rows": plain}, {"stop": stops, "rows": stopped}],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tdir = REPO / "tests/fixtures/chat_templates"
    templates = {p.stem: p.read_text() for p in sorted(tdir.glob("*.jinja"))}
    fams = chat_golden.families()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [case_record(args.out, *c, fams, templates) for c in CASES]
    (args.out / "cases.json").write_text(json.dumps(
        {"time": chat_golden.FIXED_TIME, "cases": cases}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
