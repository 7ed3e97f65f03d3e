# The embedded default: the whole PERL loop on the synthetic task, one make target per
# stage output, all under $(RUN). Called by `make demo`; a micro configuration of the same
# file runs in `make test` (tests/e2e.sh). Per-stage flags live in $(CONF)/<stage>.args,
# so touching one config reruns only what depends on it.
#
#   make -f pipelines/demo.mk BIN=target/release RUN=runs/demo ITERATIONS=3
#   make -f pipelines/demo.mk iter-002        # up to a given iteration

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

BIN ?= target/release
RUN ?= runs/demo
CONF ?= pipelines/demo
ITERATIONS ?= 3
SEED ?= 0
THREADS ?= 2

# Flags of a stage: its .args file without comments.
args = $(shell grep -v '^[[:space:]]*\#' $(CONF)/$(1).args | tr '\n' ' ')
TIME := scripts/timed.sh $(RUN)/timings.jsonl
G := --seed $(SEED) --threads $(THREADS)

DATA := $(RUN)/data
SFT := $(RUN)/sft
RM := $(RUN)/rm
iter = iter-$(shell printf %03d $(1))
LAST := $(RUN)/$(call iter,$(ITERATIONS))/policy/adapter_config.json

.PHONY: all
all: $(RUN)/report/summary.json

# --- data, model, SFT ---------------------------------------------------------------

$(DATA)/sft.parquet $(DATA)/prompts.parquet $(DATA)/eval_prompts.parquet &: $(CONF)/data.args
	$(TIME) prep-data $(BIN)/prep-data synthetic $(G) $(call args,data) --out-dir $(DATA)

$(RUN)/model/config.json: $(DATA)/sft.parquet $(CONF)/model.args
	$(TIME) init-model $(BIN)/init-model $(G) $(call args,model) \
	  --text-file $(DATA)/sft.parquet --text-column prompt --text-column completion --out $(RUN)/model

$(SFT)/config.json: $(RUN)/model/config.json $(DATA)/sft.parquet $(CONF)/sft.args
	$(TIME) train-sft $(BIN)/train-sft $(G) $(call args,sft) \
	  --model $(RUN)/model --data $(DATA)/sft.parquet --out $(SFT)

# --- reward model from oracle-labelled pairs of SFT samples ------------------------

$(RUN)/pairs/rollouts.parquet: $(SFT)/config.json $(DATA)/prompts.parquet $(CONF)/pairs.args
	$(TIME) sample-pairs $(BIN)/sample-rollouts $(G) $(call args,pairs) \
	  --model $(SFT) --prompts $(DATA)/prompts.parquet --iteration 0 --no-ref-logprobs --out $@

$(RUN)/pairs/scores.parquet: $(RUN)/pairs/rollouts.parquet
	$(TIME) score-pairs $(BIN)/score-rewards $(G) --rollouts $< --rule gold --out $@

$(DATA)/preferences.parquet: $(RUN)/pairs/rollouts.parquet $(RUN)/pairs/scores.parquet $(CONF)/labels.args
	$(TIME) label-pairs $(BIN)/prep-data pairs $(G) $(call args,labels) \
	  --rollouts $(RUN)/pairs/rollouts.parquet --scores $(RUN)/pairs/scores.parquet \
	  --score-column gold --out $@

$(RM)/adapter_config.json: $(SFT)/config.json $(DATA)/preferences.parquet $(CONF)/rm.args
	$(TIME) train-rm-lora $(BIN)/train-rm-lora $(G) $(call args,rm) \
	  --model $(SFT) --preferences $(DATA)/preferences.parquet --out $(RM)

# --- policy iterations: sample -> score -> update ----------------------------------

# $(1): iteration number, $(2): its folder name, $(3): previous policy's adapter_config.json
define ITERATION
$(RUN)/$(2)/rollouts.parquet: $(SFT)/config.json $(DATA)/prompts.parquet $(CONF)/sample.args $(3)
	$$(TIME) sample-$(2) $(BIN)/sample-rollouts --seed $$$$(( $(SEED) + $(1) )) --threads $(THREADS) \
	  $$(call args,sample) --model $(SFT) $(if $(3),--adapter $(patsubst %/,%,$(dir $(3)))) \
	  --prompts $(DATA)/prompts.parquet --iteration $(1) --out $$@

$(RUN)/$(2)/scores.parquet: $(RUN)/$(2)/rollouts.parquet $(RM)/adapter_config.json $(CONF)/score.args
	$$(TIME) score-$(2) $(BIN)/score-rewards $$(G) $$(call args,score) \
	  --model $(SFT) --reward-model $(RM) --rollouts $(RUN)/$(2)/rollouts.parquet --out $$@

$(RUN)/$(2)/policy/adapter_config.json: $(RUN)/$(2)/rollouts.parquet $(RUN)/$(2)/scores.parquet $(CONF)/ppo.args $(3)
	$$(TIME) ppo-$(2) $(BIN)/ppo-update $$(G) $$(call args,ppo) --model $(SFT) \
	  $(if $(3),--adapter $(patsubst %/,%,$(dir $(3)))) --iteration $(1) \
	  --rollouts $(RUN)/$(2)/rollouts.parquet --scores $(RUN)/$(2)/scores.parquet \
	  --out $(RUN)/$(2)/policy

.PHONY: $(2)
$(2): $(RUN)/$(2)/policy/adapter_config.json
endef

prev_policy = $(if $(filter 1,$(1)),,$(RUN)/$(call iter,$(shell echo $$(($(1) - 1))))/policy/adapter_config.json)
$(foreach i,$(shell seq 1 $(ITERATIONS)),$(eval $(call ITERATION,$(i),$(call iter,$(i)),$(call prev_policy,$(i)))))

# --- final: merge, held-out evaluation, report -------------------------------------

$(RUN)/final/merged/config.json: $(SFT)/config.json $(LAST)
	$(TIME) merge-adapter $(BIN)/merge-adapter $(G) --model $(SFT) \
	  --adapter $(patsubst %/,%,$(dir $(LAST))) --out $(RUN)/final/merged --verify

$(RUN)/final/sft_rollouts.parquet: $(SFT)/config.json $(DATA)/eval_prompts.parquet $(CONF)/eval.args
	$(TIME) eval-sample-sft $(BIN)/sample-rollouts $(G) $(call args,eval) --model $(SFT) \
	  --prompts $(DATA)/eval_prompts.parquet --iteration $(ITERATIONS) --out $@

$(RUN)/final/policy_rollouts.parquet: $(SFT)/config.json $(LAST) $(DATA)/eval_prompts.parquet $(CONF)/eval.args
	$(TIME) eval-sample-policy $(BIN)/sample-rollouts $(G) $(call args,eval) --model $(SFT) \
	  --adapter $(patsubst %/,%,$(dir $(LAST))) \
	  --prompts $(DATA)/eval_prompts.parquet --iteration $(ITERATIONS) --out $@

$(RUN)/final/%_scores.parquet: $(RUN)/final/%_rollouts.parquet $(RM)/adapter_config.json
	$(TIME) eval-score-$* $(BIN)/score-rewards $(G) --model $(SFT) --reward-model $(RM) \
	  --rule gold:0 --rollouts $< --out $@

$(RUN)/report/summary.json: $(RUN)/final/merged/config.json $(RUN)/final/sft_scores.parquet $(RUN)/final/policy_scores.parquet
	$(TIME) report $(BIN)/report $(G) --run-dir $(RUN) --out-dir $(RUN)/report
	@echo "report: $(RUN)/report/summary.md  (html: $(RUN)/report/summary.html)" >&2
