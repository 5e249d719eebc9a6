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
	$(BIN)/pip install --quiet -e ".[judge,test,tensorboard]"  # TensorBoard: the tracker the tests read back
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf run

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) runs

# Benchmarks (see benchmarks/RESULTS.md). The peer is the classic TRL 0.11.4 seq2seq PPO, in its own venv.
PEER ?= $(HOME)/peer-trl011
PEER_DIR := ../shared/peers/trl011

.PHONY: bench bench-compare bench-limit bench-decoding peer-venv

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

# the step's kernel floor on this machine (its matmuls and attention replayed alone), on the
# peer's inputs when bench-compare has written them
bench-limit: $(STAMP)
	$(BIN)/python benchmarks/limit.py $(if $(wildcard $(PEER)/init_model),--model-in $(PEER)/init_model \
		--tokenizer $(PEER)/tokenizer --prompts $(PEER)/prompts.jsonl)

bench-decoding: $(STAMP)
	$(BIN)/python benchmarks/decoding.py --world $(if $(wildcard $(PEER)/init_model),--model-in $(PEER)/init_model \
		--tokenizer $(PEER)/tokenizer --prompts $(PEER)/prompts.jsonl)

# Checks on real third-party data in ../shared/data (never copied into the repository; see benchmarks/RESULTS.md).
SHARED   ?= ../shared/data
STANDINS ?= $(or $(RLHF_CACHE),$(HOME)/.cache/rlhf)/standins
# The Davidson reward classifier offline: a small encoder trained from scratch instead of distilroberta-base
DAVIDSON_OFFLINE := reward.model=$(STANDINS)/encoder reward.from_scratch=true reward.learning_rate=1e-3 \
	reward.epochs=3 run_name=reward_davidson_offline

.PHONY: smoke-lab reward-davidson gpu-smoke

smoke-lab: $(STAMP)
	$(BIN)/python benchmarks/smoke_lab.py --shared $(SHARED)

reward-davidson: $(STAMP)
	$(BIN)/python benchmarks/standins.py --out $(STANDINS) --only encoder --shared $(SHARED)
	$(BIN)/rlhf reward configs/reward_davidson.yaml reward.data.source=$(SHARED)/davidson/labeled_data.csv \
		$(DAVIDSON_OFFLINE)

gpu-smoke: $(STAMP)
	bash benchmarks/gpu_smoke.sh

# Does the demo's result hold on other seeds, another tiny world and one thread? (~50 min on 2 cores)
.PHONY: robustness
robustness: $(STAMP)
	$(BIN)/python benchmarks/robustness.py --table runs/robustness/table.md
