"""Reference side of merge-adapter's tests (run by tests/merge.rs with the project's Python).

    hf_reference.py load --merged DIR --kind causal|seqcls --ids JSON --out FILE
        loads DIR with transformers' Auto class as-is and writes its logits (causal:
        (b, s, V); seqcls: (b,) scores) to FILE (safetensors, key "out").
    hf_reference.py peft --base DIR --adapter DIR --kind causal|seqcls --out FILE
        merges the adapter with peft's merge_and_unload and writes the state dict to FILE.
"""

import argparse
import json
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

torch.set_num_threads(1)


def auto(kind):
    return AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification


def load(args):
    model = auto(args.kind).from_pretrained(args.merged, dtype=torch.float32).eval()
    ids = torch.tensor(json.loads(args.ids), dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    if args.kind == "seqcls":
        out = out.squeeze(-1)
    save_file({"out": out.float().contiguous()}, args.out)


def merge(args):
    from peft import PeftModel

    kw = {"num_labels": 1} if args.kind == "seqcls" else {}
    base = auto(args.kind).from_pretrained(args.base, dtype=torch.float32, **kw)
    merged = PeftModel.from_pretrained(base, args.adapter).merge_and_unload()
    sd = {k: v.float().contiguous() for k, v in merged.state_dict().items()}
    # Tied embeddings appear under both names: keep the input embedding only.
    if getattr(merged.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    save_file(sd, args.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("load")
    a.add_argument("--merged", required=True)
    a.add_argument("--kind", choices=["causal", "seqcls"], required=True)
    a.add_argument("--ids", required=True)
    a.add_argument("--out", required=True)
    p = sub.add_parser("peft")
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--kind", choices=["causal", "seqcls"], required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    load(args) if args.cmd == "load" else merge(args)


if __name__ == "__main__":
    main()
