# The RL loop shared by the pipelines: N x (sample-rollouts -> score-rewards -> ppo-update,
# then the updated policy on the held-out prompts), then merge, held-out evaluation of the
# base (adapter off) and the final policy, report. The including file sets RUN, CONF, BASE
# (frozen model folder), PROMPTS, EVAL_PROMPTS and RM (reward model folder: an adapter, an
# ensemble or a full model; a rule of its own makes $(RM)/metrics.parquet: the folder is
# written as a whole, so that file stands for all of it).

LAST := $(RUN)/$(call iter,$(ITERATIONS))/policy/adapter_config.json
# Extra flags of every ppo-update, e.g. --record-timings (pipelines/demo-perl.mk)
PPO_FLAGS ?=

# --- policy iterations: sample -> score -> update ----------------------------------

# $(1): iteration number, $(2): its folder name, $(3): previous policy's adapter_config.json
define ITERATION
$(RUN)/$(2)/rollouts.parquet: $(BASE)/config.json $(PROMPTS) $(call conf,sample) $(3)
	$$(TIME) sample-$(2) $(BIN)/sample-rollouts --seed $$$$(( $(SEED) + $(1) )) --threads $(THREADS) \
	  $$(call args,sample) --model $(BASE) $(if $(3),--adapter $(patsubst %/,%,$(dir $(3)))) \
	  --prompts $(PROMPTS) --iteration $(1) --out $$@

$(RUN)/$(2)/scores.parquet: $(RUN)/$(2)/rollouts.parquet $(RM)/metrics.parquet $(call conf,score)
	$$(TIME) score-$(2) $(BIN)/score-rewards $$(G) $$(call args,score) \
	  --model $(BASE) --reward-model $(RM) --rollouts $(RUN)/$(2)/rollouts.parquet --out $$@

$(RUN)/$(2)/policy/adapter_config.json: $(RUN)/$(2)/rollouts.parquet $(RUN)/$(2)/scores.parquet $(call conf,ppo) $(3)
	$$(TIME) ppo-$(2) $(BIN)/ppo-update $$(G) $$(call args,ppo) $(PPO_FLAGS) --model $(BASE) \
	  $(if $(3),--adapter $(patsubst %/,%,$(dir $(3)))) --iteration $(1) \
	  --rollouts $(RUN)/$(2)/rollouts.parquet --scores $(RUN)/$(2)/scores.parquet \
	  --out $(RUN)/$(2)/policy

# held-out evaluation of the updated policy (EVAL_EACH=1): the report's over-optimisation
# figures, reward-vs-KL frontier and best iteration under the KL budget
$(RUN)/$(2)/eval_rollouts.parquet: $(BASE)/config.json $(RUN)/$(2)/policy/adapter_config.json $(EVAL_PROMPTS) $(call conf,eval)
	$$(TIME) eval-sample-$(2) $(BIN)/sample-rollouts $$(G) $$(call args,eval) --model $(BASE) \
	  --adapter $(RUN)/$(2)/policy --prompts $(EVAL_PROMPTS) --iteration $(1) --out $$@

$(RUN)/$(2)/eval_scores.parquet: $(RUN)/$(2)/eval_rollouts.parquet $(RM)/metrics.parquet $(call conf,score)
	$$(TIME) eval-score-$(2) $(BIN)/score-rewards $$(G) $$(call args,score) \
	  --model $(BASE) --reward-model $(RM) --rollouts $$< --out $$@

.PHONY: $(2)
$(2): $(RUN)/$(2)/policy/adapter_config.json
endef

prev_policy = $(if $(filter 1,$(1)),,$(RUN)/$(call iter,$(shell echo $$(($(1) - 1))))/policy/adapter_config.json)
$(foreach i,$(shell seq 1 $(ITERATIONS)),$(eval $(call ITERATION,$(i),$(call iter,$(i)),$(call prev_policy,$(i)))))

# --- final: merge, held-out evaluation, report -------------------------------------

# merge-adapter reads $(CONF)/merge.toml when there is one (e.g. `dtype = "bf16"` to merge
# into the dtype the adapter was trained in: the base check compares weights as loaded)
merge_args = $(if $(CONFIG),,$(if $(wildcard $(CONF)/merge.toml),--config $(CONF)/merge.toml))
$(RUN)/final/merged/config.json: $(BASE)/config.json $(LAST)
	$(TIME) merge-adapter $(BIN)/merge-adapter $(G) $(merge_args) --model $(BASE) \
	  --adapter $(patsubst %/,%,$(dir $(LAST))) --out $(RUN)/final/merged --verify

$(RUN)/final/sft_rollouts.parquet: $(BASE)/config.json $(EVAL_PROMPTS) $(call conf,eval)
	$(TIME) eval-sample-sft $(BIN)/sample-rollouts $(G) $(call args,eval) --model $(BASE) \
	  --prompts $(EVAL_PROMPTS) --iteration $(ITERATIONS) --out $@

$(RUN)/final/policy_rollouts.parquet: $(BASE)/config.json $(LAST) $(EVAL_PROMPTS) $(call conf,eval)
	$(TIME) eval-sample-policy $(BIN)/sample-rollouts $(G) $(call args,eval) --model $(BASE) \
	  --adapter $(patsubst %/,%,$(dir $(LAST))) \
	  --prompts $(EVAL_PROMPTS) --iteration $(ITERATIONS) --out $@

$(RUN)/final/%_scores.parquet: $(RUN)/final/%_rollouts.parquet $(RM)/metrics.parquet $(call conf,score)
	$(TIME) eval-score-$* $(BIN)/score-rewards $(G) $(call args,score) --model $(BASE) \
	  --reward-model $(RM) --rollouts $< --out $@

# EVAL_EACH=1 (default): every iteration's policy is also evaluated on the held-out prompts
# (a small sampling and scoring pass each); 0 evaluates only the final policy.
EVAL_EACH ?= 1
EACH_EVAL := $(if $(filter 1,$(EVAL_EACH)),$(foreach i,$(shell seq 1 $(ITERATIONS)),$(RUN)/$(call iter,$(i))/eval_scores.parquet))
# REPORT_FLAGS: e.g. --kl-budget 5 (default: the adaptive KL controller's target)
REPORT_FLAGS ?=
$(RUN)/report/summary.json: $(RUN)/final/merged/config.json $(RUN)/final/sft_scores.parquet $(RUN)/final/policy_scores.parquet $(EACH_EVAL)
	$(TIME) report $(BIN)/report $(G) $(REPORT_FLAGS) --run-dir $(RUN) --out-dir $(RUN)/report
	@echo "report: $(RUN)/report/summary.md  (html: $(RUN)/report/summary.html)" >&2
