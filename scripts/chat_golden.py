#!/usr/bin/env python3
"""Golden cases for chat templates and tokenizer families, made with transformers.

    chat_golden.py --out DIR

Builds small tokenizers with the `tokenizers` library, one per family:
  bpe_bos    byte-level BPE whose post-processor adds BOS (Llama-3 style)
  bpe_nobos  byte-level BPE without BOS (GPT-2 / Qwen2 style)
  spm_bos    SentencePiece-style BPE: Metaspace pre-tokenizer, byte fallback, `<s>` added by
             the post-processor and `add_bos_token: true` in tokenizer_config.json
             (Llama-2 / Mistral style)
each with special tokens (BOS/EOS and the control tokens of the templates) and added
non-special tokens. Every tokenizer is saved with `save_pretrained` beside each template of
tests/fixtures/chat_templates/ (transformers 5 writes `chat_template.jinja`), plus one folder
with named templates in tokenizer_config.json. Then, for every folder and conversation,
`apply_chat_template` gives the rendered text (tokenize=False) and the ids (tokenize=True),
or the template's exception; and a list of probes renders small templates that exercise one
Jinja2 feature each. Everything goes to DIR/cases.json; the Rust test
crates/rlhf-core/tests/chat_golden.rs renders and tokenizes the same cases and compares.
Deterministic: no randomness, `strftime_now` reads a fixed time.
"""

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
import transformers.utils.chat_template_utils as chat_template_utils  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

# 2025-03-09 17:04:05 UTC: what `strftime_now` reads on both sides.
FIXED_TIME = 1741539845

CORPUS = [
    "Hello there! What's 12 + 7? It is 19, of course.",
    "You are a helpful assistant. Answer briefly and politely.",
    "The weather in Paris is sunny; the temperature is 21 degrees.",
    "Name three colours: red, green and blue. Thanks a lot!",
    "def add(a, b):\n    return a + b\n",
    "system user assistant tool function arguments parameters name description",
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
] * 20

CONTROL = [
    "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "<start_of_turn>",
    "<end_of_turn>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
]
# Added tokens that are not special (kept by skip_special_tokens), as Qwen2's <tool_call>.
PLAIN_ADDED = ["<tool_call>", "</tool_call>"]


def byte_level(bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [bos, "<|endoftext|>"] if bos else ["<|endoftext|>"]
    tr = trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, tr)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def sentencepiece_like():
    pre = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre
    tr = trainers.BpeTrainer(vocab_size=500, limit_alphabet=60, show_progress=False)
    base.train_from_iterator(CORPUS, tr)
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def families():
    out = {}
    for name, tok, toks, extra_cfg in [
        ("bpe_bos", byte_level("<|begin_of_text|>"),
         dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|endoftext|>"), {}),
        ("bpe_nobos", byte_level(None),
         dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None), {}),
        ("spm_bos", sentencepiece_like(),
         dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), {"add_bos_token": True}),
    ]:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED])
        out[name] = (tok, {k: v for k, v in toks.items() if v is not None}, extra_cfg)
    return out


def save(tok, toks, extra_cfg, folder, template, legacy_named=False):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **toks)
    if legacy_named:
        fast.chat_template = {"tool_use": "{{ tools | tojson }}", "default": template}
        fast.save_pretrained(folder, save_jinja_files=False)
    else:
        fast.chat_template = template
        fast.save_pretrained(folder)
    if extra_cfg:
        cfg_path = Path(folder) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(extra_cfg)
        cfg_path.write_text(json.dumps(cfg, indent=2))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city, in \u00b0C. Use <b>only</b> for real cities & towns.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
                    "ratio": {"type": "number", "default": 0.5},
                },
                "required": ["city"],
            },
            "return": {"type": "number"},
        },
    }
]

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello there! What's 12 + 7?"}],
    "system_single": [
        {"role": "system", "content": "  You are terse.\n"},
        {"role": "user", "content": "Name three colours."},
    ],
    "multi": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": " Hello. How can I help?  \n"},
        {"role": "user", "content": "What is the weather in Paris?"},
    ],
    "system_multi": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Best colour?"},
        {"role": "assistant", "content": "Blue"},
        {"role": "user", "content": "Why?"},
    ],
    "tricky": [
        {"role": "user", "content": "  spaced   words\tand tabs\n\n it's \"quoted\" "},
        {"role": "assistant", "content": "\u00dcn\u00efc\u00f6d\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001F600 <|im_end|> <tool_call> done"},
        {"role": "user", "content": "#skip this one"},
        {"role": "user", "content": "caf\u00e9\r\nna\u00efve \x1e end"},
    ],
    "tools": [
        {"role": "user", "content": "Weather in Paris for 2 days?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "{\"temperature\": 21.5}"},
        {"role": "assistant", "content": "Sunny, 21.5 \u00b0C."},
        {"role": "user", "content": "Thanks"},
    ],
    # Contents without surrounding whitespace (prep-data trims message contents on input).
    "clean": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "Yes, 7 is prime."},
        {"role": "user", "content": "And 9?"},
    ],
    "clean_system": [
        {"role": "system", "content": "Reply in French."},
        {"role": "user", "content": "Good morning!"},
    ],
    "bad_role": [{"role": "robot", "content": "beep"}],
    "two_users": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
}


def conversation_vars(name):
    if name == "tools":
        return {"tools": TOOLS}
    if name == "system_multi":
        return {"date_string": "26 Jul 2024", "assistant_name": "Tiny"}
    return {}


class FixedClock(datetime):
    """`datetime` whose `now()` is FIXED_TIME (transformers' `strftime_now` calls
    `datetime.now()`; a template variable cannot replace it, kwargs are made plain data)."""

    @classmethod
    def now(cls, tz=None):
        return datetime.fromtimestamp(FIXED_TIME, timezone.utc).replace(tzinfo=None)


chat_template_utils.datetime = FixedClock


def apply(tok, messages, agp, vars_, chat_template=None):
    kwargs = dict(vars_)
    try:
        text = tok.apply_chat_template(
            messages, add_generation_prompt=agp, tokenize=False, chat_template=chat_template, **kwargs
        )
        ids = tok.apply_chat_template(
            messages, add_generation_prompt=agp, tokenize=True, return_dict=False,
            chat_template=chat_template, **kwargs
        )
        return {"text": text, "ids": ids}
    except Exception as e:  # the template's exception (TemplateError and Jinja2's own)
        return {"error": f"{type(e).__name__}: {e}"}


# One Jinja2 feature per probe. `names`: words the error must contain on our side when the
# reference fails too (the unsupported name, the template's own message).
PROBES = [
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s | trim }}|{{ s.split() }}", {"s": "  \x1e hi  there \n\t"}, []),
    ("{{ s.title() }}|{{ s | title }}|{{ s | capitalize }}|{{ s.capitalize() }}|{{ s.upper() }}|{{ s | lower }}",
     {"s": "hello wORLD it's 1st (a)b-c"}, []),
    ("{{ s.split(',') }}|{{ s.split(',', 1) | join('+') }}|{{ s.startswith('a') }}|{{ s.endswith(('x', 'c')) }}|"
     "{{ s.replace(',', ';') }}|{{ s.find('b') }}|{{ s.count(',') }}|{{ s.splitlines() }}", {"s": "a,b,,c"}, []),
    ("{{ true }} {{ false }} {{ none }} {{ [1, 'a', none, 2.5, \"it's\"] }} {{ {'a': 1, 'b': [true]} }} {{ 1e16 }} "
     "{{ 4 / 2 }} {{ 7 // 2 }} {{ 1.5e-5 }} {{ 0.1 + 0.2 }} {{ -3 % 5 }} {{ 2 ** 10 }}", {}, []),
    ("{{ x | tojson }}\n{{ x | tojson(indent=2) }}\n{{ x | tojson(indent=4, sort_keys=true) }}\n"
     "{{ x | tojson(separators=(',', ':')) }}\n{{ x | tojson(ensure_ascii=true) }}\n{{ 'é<&>\\'' | tojson }}",
     {"x": {"z": [1, 2.5, None, True, "caf\u00e9 <b>&"], "a": {}, "m": [], "n": {"k": "\n\t\""}}}, []),
    ("[{{ foo }}|{{ foo is defined }}|{% if foo %}T{% else %}F{% endif %}|{{ foo | default('d') }}|"
     "{% for x in foo %}{{ x }}{% endfor %}|{{ messages[0].missing }}|{{ messages[0]['missing'] is defined }}|"
     "{{ foo is undefined }}|{{ tools is none }}|{{ documents is none }}|{{ bos_token }}|{{ unk_token is defined }}]",
     {}, []),
    ("{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}"
     "{% endfor %}{{ ns.n }} {{ ns.s }}", {}, []),
    ("{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
     "{{ loop.revindex }};{% endfor %}|{% for m in messages if m.role != 'system' %}{{ loop.index0 }}{{ loop.last }},"
     "{% endfor %}|{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}"
     "{{ i }}{% endfor %}", {}, []),
    ("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | map(attribute='role') | join(',') }}|"
     "{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='content') | first }}|{{ [3, 1, 2] | sort }}|"
     "{{ [1, 2, 2, 1] | unique | list }}|{{ [1, 2] | reverse | list }}|{{ 'a\\nb' | indent(2) }}|{{ 3.7 | int }}|"
     "{{ '3' | int + 1 }}|{{ 2.456 | round(1) }}|{{ [1, 2] | sum }}|{% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}={{ v }},"
     "{% endfor %}|{% for k, v in {'b': 1, 'a': 2} | items %}{{ k }}={{ v }},{% endfor %}|{{ 'abc' | list }}|{{ 5 | string ~ 'a' }}|"
     "{{ [1, 5, 3] | max }}|{{ 'x' | length }}", {}, []),
    ("{{ dict(a=1, b='x') }}|{% for k, v in {'a': 1}.items() %}{{ k }}:{{ v }}{% endfor %}|{{ {'a': 1}.get('b', 'z') }}|{{ {'a': 1}.keys() | list }}|"
     "{{ {'a': 1}.values() | list }}", {}, []),
    ("{{ 'x' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'x' is sequence }} {{ 1 is number }} "
     "{{ none is none }} {{ 9 is divisibleby 3 }} {{ 'a' is in 'abc' }} {{ 2 is even }} {{ 1.5 is float }} "
     "{{ 1 is integer }} {{ true is boolean }} {{ 'AB' is upper }}", {}, []),
    ("{{ messages[1:] | length }}|{{ 'hello'[::-1] }}|{{ 'hello'[1:3] }}|{{ messages[-1].role }}|{{ 'a' ~ 1 }}|"
     "{{ 'ab' * 2 }}|{{ 'a' + 'b' }}|{{ 'b' in 'abc' }}|{{ 'x' if false }}|{{ 'y' if true else 'n' }}", {}, []),
    ("  {% if true %}\n  kept\n  {% endif %}\n  {# comment #}\n{%+ if true %}plus{% endif %}\n{{- ' x ' -}}\n  y  \n"
     "{% raw %}{{ raw }}{% endraw %}\n{% set v %}block {{ 1 }}{% endset %}{{ v }}\n"
     "{% macro f(x, y='d') %}[{{ x }}{{ y }}]{% endmacro %}{{ f('a') }}{{ f('b', y='e') }}\n"
     "{% generation %}gen{% endgeneration %}\nend\n", {}, []),
    ("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %-d, %Y %H:%M:%S %A %a %j %I%p %y %e %m') }}|"
     "{{ strftime_now('%Y-%m-%d %%') }}", {}, []),
    ("{{ raise_exception('boom: ' ~ messages | length) }}", {}, ["boom: 2"]),
    ("{{ s.frobnicate() }}", {"s": "x"}, ["frobnicate"]),
    ("{{ not_a_function() }}", {}, ["not_a_function"]),
    ("{{ 'x' | no_such_filter }}", {}, ["no_such_filter"]),
    ("{{ 'x' is no_such_test }}", {}, ["no_such_test"]),
    ("{% do messages.append(1) %}", {}, ["do"]),
    ("{{ foo.bar }}", {}, ["undefined"]),
    ("{{ 'a' + 1 }}", {}, []),
    ("{{ messages.append(1) }}", {}, ["append"]),
]
PROBE_MESSAGES = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "hi"},
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    tdir = repo / "tests/fixtures/chat_templates"
    templates = {p.stem: p.read_text() for p in sorted(tdir.glob("*.jinja"))}
    args.out.mkdir(parents=True, exist_ok=True)
    fams = families()

    cases, texts = [], {}
    for fam, (tok, toks, extra_cfg) in fams.items():
        folders = [(tname, f"{fam}__{tname}", src, False) for tname, src in templates.items()]
        folders.append(("llama3", f"{fam}__named", templates["llama3"], True))
        for tname, folder_name, src, legacy in folders:
            folder = args.out / folder_name
            save(tok, toks, extra_cfg, folder, src, legacy_named=legacy)
            hf = AutoTokenizer.from_pretrained(folder)
            for conv_name, messages in CONVERSATIONS.items():
                for agp in (True, False):
                    vars_ = conversation_vars(conv_name)
                    res = apply(hf, messages, agp, vars_)
                    cases.append({
                        "folder": folder_name, "family": fam, "template": tname, "conversation": conv_name,
                        "messages": messages, "add_generation_prompt": agp, "vars": vars_, **res,
                    })
        hf = AutoTokenizer.from_pretrained(args.out / f"{fam}__llama3")
        samples = [
            "Hello there! What's 12 + 7?",
            " leading space and trailing  ",
            "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \x1e",
            "line one\nline two\n\n  indented",
            "Sure.<|im_end|> more <tool_call>{\"a\": 1}</tool_call>",
            "",
        ]
        texts[fam] = [{
            "text": t,
            "ids_plain": hf(t, add_special_tokens=False)["input_ids"],
            "ids_special": hf(t)["input_ids"],
            "decoded": hf.decode(hf(t, add_special_tokens=False)["input_ids"], skip_special_tokens=True),
            "decoded_all": hf.decode(hf(t, add_special_tokens=False)["input_ids"], skip_special_tokens=False),
        } for t in samples]

    hf = AutoTokenizer.from_pretrained(args.out / "bpe_bos__llama3")
    probes = []
    for src, vars_, names in PROBES:
        res = apply(hf, PROBE_MESSAGES, False, vars_, chat_template=src)
        res.pop("ids", None)
        probes.append({"template": src, "vars": vars_, "names": names, **res})

    (args.out / "cases.json").write_text(json.dumps({
        "time": FIXED_TIME, "messages": PROBE_MESSAGES, "cases": cases, "texts": texts, "probes": probes,
    }, ensure_ascii=False, indent=1))
    print(f"{len(cases)} cases, {sum(len(v) for v in texts.values())} texts, {len(probes)} probes -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
