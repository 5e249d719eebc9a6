# Two commands on a fresh machine: `make demo` (the offline pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[judge,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf run

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs

# Benchmarks (see benchmarks/RESULTS.md). The peer is the classic TRL 0.11.4 seq2seq PPO, in its own venv.
PEER ?= $(HOME)/peer-trl011
PEER_DIR := ../shared/peers/trl011

.PHONY: bench bench-compare peer-venv

bench: $(STAMP)
	$(BIN)/python benchmarks/ppo_step.py --steps 4 --rollout-compare

$(PEER)/venv/.installed:
	$(PYTHON) -m venv $(PEER)/venv
	$(PEER)/venv/bin/pip install --quiet torch==2.13.0
	$(PEER)/venv/bin/pip install --quiet -r $(PEER_DIR)/requirements.txt
	touch $@

peer-venv: $(PEER)/venv/.installed

bench-compare: $(STAMP) peer-venv
	PEER=$(PEER) $(BIN)/python benchmarks/compare.py --steps 4 --rounds 2
