# `make label`: the labelling page (label-pairs serve) on the demo's pairs, the SFT model's
# samples that the demo otherwise labels with the oracle. Answers go to $(LABELS)/journal.jsonl;
# stop with Ctrl-C and run again to resume. Then, as the README shows:
#   label-pairs export --in $(LABELS) --out $(RUN)/data/human-preferences.parquet
#   train-rm-lora --model $(RUN)/sft --preferences $(RUN)/data/human-preferences.parquet --out $(RUN)/rm-human
#
#   make -f pipelines/label.mk BIN=target/release [RUN=runs/demo] [LABEL_FLAGS="--overlap 2 --bind 127.0.0.1:8765"]

include pipelines/demo.mk

LABELS ?= $(RUN)/labels
LABEL_FLAGS ?=

.PHONY: label
label: $(RUN)/pairs/rollouts.parquet
	rc=0; $(BIN)/label-pairs serve --rollouts $< --out $(LABELS) --seed $(SEED) $(LABEL_FLAGS) || rc=$$?; \
	  [ $$rc = 0 ] || [ $$rc = 130 ] || [ $$rc = 143 ] || exit $$rc
