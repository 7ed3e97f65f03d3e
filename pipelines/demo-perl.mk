# PERL's comparison on the embedded task (`make demo-perl`): the demo's LoRA reward model
# and LoRA policy (pipelines/demo.mk, unchanged) beside a fully tuned reward model and a
# fully tuned policy trained on the same data, SFT model, seeds and reward model, each
# stage recording its time per step and peak memory (--record-timings). The report prints
# the four arms side by side with the paper's findings (its "PERL: LoRA vs full tuning").
#
#   make -f pipelines/demo-perl.mk BIN=target/release RUN=runs/demo-perl ITERATIONS=12
#
# Full-tuning flags: $(CONF)/rm-full.toml and $(CONF)/ppo-full.toml (complete flag sets:
# full tuning takes no --lora-* flags and a smaller learning rate).

RUN ?= runs/demo-perl
RM_FLAGS := --record-timings
PPO_FLAGS := --record-timings
include pipelines/demo.mk

RM_FULL := $(RUN)/rm-full
FULL_LAST := $(RUN)/$(call iter,$(ITERATIONS))/policy-full/config.json

$(RUN)/report/summary.json: $(RM_FULL)/metrics.parquet $(RUN)/final-full/policy_scores.parquet

$(RM_FULL)/metrics.parquet: $(SFT)/config.json $(DATA)/preferences.parquet $(call conf,rm-full)
	$(TIME) train-rm-full $(BIN)/train-rm-lora $(G) $(call args,rm-full) --full --record-timings \
	  --model $(SFT) --preferences $(DATA)/preferences.parquet --out $(RM_FULL)

# --- the fully tuned policy: same loop, every weight trained, the SFT model as reference --
# The full arm is scored by the same (LoRA) reward model as the LoRA arm, so the two
# policies differ only in how they are tuned. Its rollouts take reference log-probs from
# the SFT model (--ref-model: a full policy has no adapter to switch off).

# $(1): iteration number, $(2): its folder name, $(3): the policy folder it samples from
define FULL_ITERATION
$(RUN)/$(2)/full/rollouts.parquet: $(3)/config.json $(SFT)/config.json $(PROMPTS) $(call conf,sample)
	$$(TIME) sample-full-$(2) $(BIN)/sample-rollouts --seed $$$$(( $(SEED) + $(1) )) --threads $(THREADS) \
	  $$(call args,sample) --model $(3) --ref-model $(SFT) --prompts $(PROMPTS) --iteration $(1) --out $$@

$(RUN)/$(2)/full/scores.parquet: $(RUN)/$(2)/full/rollouts.parquet $(RM)/metrics.parquet $(call conf,score)
	$$(TIME) score-full-$(2) $(BIN)/score-rewards $$(G) $$(call args,score) \
	  --model $(SFT) --reward-model $(RM) --rollouts $$< --out $$@

$(RUN)/$(2)/policy-full/config.json: $(RUN)/$(2)/full/rollouts.parquet $(RUN)/$(2)/full/scores.parquet $(call conf,ppo-full) $(3)/config.json
	$$(TIME) ppo-full-$(2) $(BIN)/ppo-update $$(G) $$(call args,ppo-full) --full --record-timings \
	  --model $(3) --ref-model $(SFT) --iteration $(1) \
	  --rollouts $(RUN)/$(2)/full/rollouts.parquet --scores $(RUN)/$(2)/full/scores.parquet \
	  --out $(RUN)/$(2)/policy-full
endef

full_prev = $(if $(filter 1,$(1)),$(SFT),$(RUN)/$(call iter,$(shell echo $$(($(1) - 1))))/policy-full)
$(foreach i,$(shell seq 1 $(ITERATIONS)),$(eval $(call FULL_ITERATION,$(i),$(call iter,$(i)),$(call full_prev,$(i)))))

$(RUN)/final-full/policy_rollouts.parquet: $(FULL_LAST) $(SFT)/config.json $(EVAL_PROMPTS) $(call conf,eval)
	$(TIME) eval-sample-full $(BIN)/sample-rollouts $(G) $(call args,eval) \
	  --model $(patsubst %/,%,$(dir $(FULL_LAST))) --ref-model $(SFT) \
	  --prompts $(EVAL_PROMPTS) --iteration $(ITERATIONS) --out $@

$(RUN)/final-full/policy_scores.parquet: $(RUN)/final-full/policy_rollouts.parquet $(RM)/metrics.parquet $(call conf,score)
	$(TIME) eval-score-full $(BIN)/score-rewards $(G) $(call args,score) --model $(SFT) \
	  --reward-model $(RM) --rollouts $< --out $@
