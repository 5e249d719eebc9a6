"""KL-penalty coefficient controllers (Ziegler et al. 2019, sec. 2.2; lm-human-preferences)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FixedKLController:
    """kl_coef never changes."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return asdict(self)


@dataclass
class AdaptiveKLController:
    """Adaptive kl_coef: e = clip(KL / target - 1, -0.2, 0.2); kl_coef *= 1 + e * n_steps / horizon.

    ``n_steps`` is the number of samples since the last update (the batch size), as in
    lm-human-preferences ``AdaptiveKLController.update``.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return asdict(self)


def make_kl_controller(cfg) -> FixedKLController | AdaptiveKLController:
    if cfg.controller == "fixed":
        return FixedKLController(cfg.init_kl_coef)
    return AdaptiveKLController(cfg.init_kl_coef, cfg.target, cfg.horizon)
