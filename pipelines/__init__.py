"""One thin module per stage, each exposing ``main(config)``; ``STAGES`` is the run order."""

STAGES = ["prompt", "sft", "reward", "rl", "evaluate"]
