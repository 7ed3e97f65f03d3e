# Shared by the pipelines: make settings, flags of a stage from $(CONF)/<stage>.args,
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

# Flags of a stage: its .args file without comments.
args = $(shell grep -v '^[[:space:]]*\#' $(CONF)/$(1).args | tr '\n' ' ')
TIME = scripts/timed.sh $(RUN)/timings.jsonl
G := --seed $(SEED) --threads $(THREADS)
iter = iter-$(shell printf %03d $(1))
