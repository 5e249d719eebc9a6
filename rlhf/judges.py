"""Independent toxicity judges: never used for training, so reward hacking shows.

A judge is a name in the config mapped to a scorer ``texts -> toxic probabilities``. A judge whose
package is missing is reported as not run, never silently skipped.
"""

from __future__ import annotations

from typing import Callable

Judge = Callable[[list[str]], list[float]]


def _profanity_check() -> Judge:
    from profanity_check import predict_prob  # alt-profanity-check: its model ships in the package

    return lambda texts: [float(p) for p in predict_prob(list(texts))] if texts else []


JUDGES: dict[str, Callable[[], Judge]] = {"profanity_check": _profanity_check}
INSTALL_HINT = {"profanity_check": "pip install 'rlhf[judge]' (alt-profanity-check)"}


def load_judges(names: list[str]) -> tuple[dict[str, Judge], dict[str, str]]:
    """(available judges by name, {name: why it did not load})."""
    loaded, missing = {}, {}
    for name in names:
        try:
            loaded[name] = JUDGES[name]()
        except ImportError:
            missing[name] = f"not installed: {INSTALL_HINT[name]}"
    return loaded, missing
