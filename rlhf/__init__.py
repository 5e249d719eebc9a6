"""rlhf: a staged RLHF pipeline (prompt -> sft -> reward -> ppo -> evaluate) for seq2seq models."""

__version__ = "0.1.0"
