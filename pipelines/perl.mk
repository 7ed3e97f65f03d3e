# PERL on your own model and data: prep-data -> train-rm-lora -> N x (sample-rollouts ->
# score-rewards -> ppo-update) -> merge-adapter -> held-out evaluation -> report.
#
#   make -f pipelines/perl.mk MODEL=path/to/hf-model DATA=hh-rlhf.jsonl FORMAT=hh-rlhf \
#        ITERATIONS=4 RUN=runs/perl BIN=target/release
#
# MODEL: a Hugging Face model folder (safetensors + tokenizer.json); it stays frozen: the
# reward model and the policy are LoRA adapters on it. DATA/FORMAT: anything prep-data
# converts (`prep-data convert --help`). Per-stage flags: $(CONF)/<stage>.toml (or the [<stage>] tables of CONFIG=FILE.toml).

RUN ?= runs/perl
CONF ?= pipelines/perl
MODEL ?= $(error set MODEL=<Hugging Face model folder>)
DATA ?= $(error set DATA=<feedback file, folder or glob>)
FORMAT ?= auto
include pipelines/common.mk

BASE := $(MODEL)
PREP := $(RUN)/data
PROMPTS := $(PREP)/prompts.parquet
EVAL_PROMPTS := $(PREP)/eval_prompts.parquet
RM := $(RUN)/rm

.PHONY: all
all: $(RUN)/report/summary.json

$(PREP)/preferences.parquet $(PREP)/prompts.parquet $(PREP)/eval_prompts.parquet &: $(DATA) $(call conf,data)
	$(TIME) prep-data $(BIN)/prep-data convert $(G) $(call args,data) --format $(FORMAT) \
	  --input $(DATA) --tokenizer $(MODEL) --out-dir $(PREP)

$(RM)/metrics.parquet: $(PREP)/preferences.parquet $(call conf,rm)
	$(TIME) train-rm-lora $(BIN)/train-rm-lora $(G) $(call args,rm) \
	  --model $(MODEL) --preferences $(PREP)/preferences.parquet --out $(RM)

include pipelines/rl-loop.mk
