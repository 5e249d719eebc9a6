"""PPO for encoder-decoder policies: pure maths (core, kl), models, rollout and the trainer."""
