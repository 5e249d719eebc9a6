import pytest

from rlhf.configdiff import describe, differences, flatten, resume_changes
from rlhf.errors import UserError


def test_flatten_names_nested_and_listed_settings():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "s": [{"x": 1}, {"x": 2}], "t": None}) == {
        "a.b": 1, "a.c": [1, 2], "s[len]": 2, "s[0].x": 1, "s[1].x": 2, "t": None}


def test_differences_only_in_the_given_sections():
    old = {"seed": 1, "rl": {"lr": 0.1, "kl": {"target": 6.0}}, "evaluate": {"n": 3}, "tinyworld": None}
    new = {"seed": 1, "rl": {"lr": 0.5, "kl": {"target": 2.0}}, "evaluate": {"n": 4}, "tinyworld": {"seed": 0}}
    diffs = differences(old, new, ("seed", "rl", "tinyworld"))
    assert diffs == [("rl.lr", 0.1, 0.5), ("rl.kl.target", 6.0, 2.0), ("tinyworld", None, "<unset>"),
                     ("tinyworld.seed", "<unset>", 0)]
    assert describe(diffs[:2]) == "rl.lr: 0.1 -> 0.5, rl.kl.target: 6.0 -> 2.0"
    assert differences(old, new, ("seed",)) == []


def test_resume_changes_applies_safe_keys_and_refuses_others():
    old, new = {"rl": {"steps": 3, "lr": 0.1, "r": 4}}, {"rl": {"steps": 5, "lr": 0.1, "r": 4}}
    assert resume_changes("rl", old, new, ("rl",), frozenset({"rl.steps"}), "ck/step-2") == [
        "rl: resume applies rl.steps: 3 -> 5"]
    new["rl"]["r"] = 8
    with pytest.raises(UserError, match=r"^rl: cannot resume from ck/step-2: rl.r: 4 -> 8 changed"):
        resume_changes("rl", old, new, ("rl",), frozenset({"rl.steps"}), "ck/step-2")
