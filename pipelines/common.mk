# Shared by the pipelines: make settings, flags of a stage from $(CONF)/<stage>.toml,
# timing of each stage into $(RUN)/timings.jsonl.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

BIN ?= target/release
ITERATIONS ?= 3
SEED ?= 0
THREADS ?= 2

# Flags of a stage: $(CONF)/<stage>.toml, whose keys are the stage's long flag names; or,
# with CONFIG=FILE.toml, the [<stage>] table of that one file (keys at its top apply to
# every stage). `conf` is the file a stage's rule depends on.
CONFIG ?=
args = $(if $(CONFIG),--config $(CONFIG) --config-section $(1),--config $(CONF)/$(1).toml)
conf = $(if $(CONFIG),$(CONFIG),$(CONF)/$(1).toml)
TIME = scripts/timed.sh $(RUN)/timings.jsonl
G := --seed $(SEED) --threads $(THREADS)
iter = iter-$(shell printf %03d $(1))

# Metrics stream while the stages run (rlhf_core::live): Parquet parts and TensorBoard
# event files for the whole run; `tensorboard --logdir $(RUN)/live/tensorboard` shows the
# curves as they come, `report --partial --run-dir $(RUN)` the run so far.
# LIVE= (empty) turns streaming off.
LIVE ?= $(RUN)/live
ifneq ($(LIVE),)
export RLHF_LIVE_METRICS = $(LIVE)/metrics
export RLHF_TENSORBOARD = $(LIVE)/tensorboard
endif
