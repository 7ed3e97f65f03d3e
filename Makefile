# PERL-style RLHF pipeline: set-up, build, test, demo, bench, lint.
# `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

CARGO := scripts/cargo.sh
BIN := target/release
PYTHON = $(shell scripts/setup-python.sh)/bin/python
GOLDEN := tests/fixtures/generated
PREFIX ?= $(HOME)/.local/perl-rlhf

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## Create the Python environment (torch 2.11.0, transformers, peft) in ~/.cache/perl-rlhf, once
	@scripts/setup-python.sh >/dev/null
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

.PHONY: build
build: setup ## Build every binary (release)
	$(CARGO) build --release --workspace --bins

.PHONY: schemas
schemas: build ## Regenerate schemas/*.json from the code
	$(BIN)/gen-schemas --out-dir schemas

$(GOLDEN)/.done: scripts/make_golden.py scripts/requirements.txt
	@mkdir -p $(GOLDEN)
	$(PYTHON) scripts/make_golden.py --out $(GOLDEN)
	@touch $@

.PHONY: golden
golden: setup $(GOLDEN)/.done ## Build the tiny reference models and outputs with transformers/peft

.PHONY: test
# gen-schemas runs as built by `build`: `cargo run -p gen-schemas` would resolve the features
# of that one package and rebuild arrow and parquet with them (minutes on 2 cores).
test: build golden ## Run every test: unit, golden (vs transformers/peft), CLI, end-to-end
	$(BIN)/gen-schemas --out-dir schemas --check
	RLHF_PYTHON=$(PYTHON) RLHF_GOLDEN_DIR=$(CURDIR)/$(GOLDEN) $(CARGO) test --release --workspace
	bash tests/e2e.sh
	bash tests/install.sh
	bash tests/gpu_check.sh

.PHONY: fuzz
fuzz: setup ## Long property-based fuzz of every parser (20,000 cases a property; make test runs a short one)
	RLHF_FUZZ_CASES=20000 $(CARGO) test --release -p prep-data -p rlhf-core -p rlhf-nn -p score-rewards --test 'fuzz*'

.PHONY: install
install: build ## Install into PREFIX (default ~/.local/perl-rlhf): bin/, the libtorch it loads in lib/, pipelines; movable
	scripts/install.sh $(PREFIX) $(BIN)

.PHONY: demo
demo: build ## Run the whole PERL loop on the embedded synthetic task (runs/demo)
	$(MAKE) -f pipelines/demo.mk BIN=$(CURDIR)/$(BIN)

.PHONY: demo-perl
demo-perl: build ## PERL's table on the embedded task: LoRA vs full reward model and policy (runs/demo-perl)
	$(MAKE) -f pipelines/demo-perl.mk BIN=$(CURDIR)/$(BIN)

.PHONY: label
label: build ## Label the demo's sampled pairs in the browser (label-pairs serve; runs/demo/labels); LABEL_FLAGS="--overlap 2 ..."
	$(MAKE) -f pipelines/label.mk BIN=$(CURDIR)/$(BIN) label

.PHONY: bench
bench: build ## Benchmarks: throughput, memory, ratios (runs/bench/results.json)
	RLHF_PYTHON=$(PYTHON) $(BIN)/rlhf-bench --rounds 3 --out runs/bench/results.json

.PHONY: lint
lint: setup ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

.PHONY: clean
clean: ## Remove build outputs and runs (keeps the Python environment cache)
	rm -rf target runs $(GOLDEN)
