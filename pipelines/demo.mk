# The embedded default: the whole PERL loop on the synthetic task, one make target per
# stage output, all under $(RUN). Called by `make demo`; a micro configuration of the same
# file runs in `make test` (tests/e2e.sh). Per-stage flags live in $(CONF)/<stage>.toml (or, with CONFIG=FILE.toml, its [<stage>] tables),
# so touching one config reruns only what depends on it.
#
#   make -f pipelines/demo.mk BIN=target/release RUN=runs/demo ITERATIONS=12
#   make -f pipelines/demo.mk iter-002        # up to a given iteration

RUN ?= runs/demo
ITERATIONS ?= 12
CONF ?= pipelines/demo
include pipelines/common.mk

DATA := $(RUN)/data
SFT := $(RUN)/sft
# What the RL loop (pipelines/rl-loop.mk) runs on:
BASE := $(SFT)
PROMPTS := $(DATA)/prompts.parquet
EVAL_PROMPTS := $(DATA)/eval_prompts.parquet
RM := $(RUN)/rm
# The demo's KL budget (nats per response to the SFT model): the report says whether the
# final policy is within it and names the best iteration within it (ppo.toml's controller
# targets 3 nats to stay under it)
REPORT_FLAGS ?= --kl-budget 5
# Extra flags of the reward model's training, e.g. --record-timings (pipelines/demo-perl.mk)
RM_FLAGS ?=

.PHONY: all
all: $(RUN)/report/summary.json

# --- data, model, SFT ---------------------------------------------------------------

$(DATA)/sft.parquet $(DATA)/prompts.parquet $(DATA)/eval_prompts.parquet &: $(call conf,data)
	$(TIME) prep-data $(BIN)/prep-data synthetic $(G) $(call args,data) --out-dir $(DATA)

$(RUN)/model/config.json: $(DATA)/sft.parquet $(call conf,model)
	$(TIME) init-model $(BIN)/init-model $(G) $(call args,model) \
	  --text-file $(DATA)/sft.parquet --text-column prompt --text-column completion --out $(RUN)/model

$(SFT)/config.json: $(RUN)/model/config.json $(DATA)/sft.parquet $(call conf,sft)
	$(TIME) train-sft $(BIN)/train-sft $(G) $(call args,sft) \
	  --model $(RUN)/model --data $(DATA)/sft.parquet --out $(SFT)

# --- reward model from oracle-labelled pairs of SFT samples ------------------------

$(RUN)/pairs/rollouts.parquet: $(SFT)/config.json $(DATA)/prompts.parquet $(call conf,pairs)
	$(TIME) sample-pairs $(BIN)/sample-rollouts $(G) $(call args,pairs) \
	  --model $(SFT) --prompts $(DATA)/prompts.parquet --iteration 0 --no-ref-logprobs --out $@

$(RUN)/pairs/scores.parquet: $(RUN)/pairs/rollouts.parquet
	$(TIME) score-pairs $(BIN)/score-rewards $(G) --rollouts $< --rule gold --out $@

$(DATA)/preferences.parquet: $(RUN)/pairs/rollouts.parquet $(RUN)/pairs/scores.parquet $(call conf,labels)
	$(TIME) label-pairs $(BIN)/prep-data pairs $(G) $(call args,labels) \
	  --rollouts $(RUN)/pairs/rollouts.parquet --scores $(RUN)/pairs/scores.parquet \
	  --score-column gold --out $@

$(RM)/metrics.parquet: $(SFT)/config.json $(DATA)/preferences.parquet $(call conf,rm)
	$(TIME) train-rm-lora $(BIN)/train-rm-lora $(G) $(call args,rm) $(RM_FLAGS) \
	  --model $(SFT) --preferences $(DATA)/preferences.parquet --out $(RM)

include pipelines/rl-loop.mk
