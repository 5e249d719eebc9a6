from rlhf import judges


def test_the_profanity_judge_scores_insults_above_clean_text():
    loaded, missing = judges.load_judges(["profanity_check"])
    assert missing == {}
    clean, insult = loaded["profanity_check"](["#Person1# books a table for two.", "you stupid fucking idiot"])
    assert 0 <= clean < 0.5 <= insult <= 1
    assert loaded["profanity_check"]([]) == []


def test_a_judge_whose_package_is_missing_is_named_with_how_to_install_it(monkeypatch):
    def missing():
        raise ImportError("No module named 'profanity_check'")

    monkeypatch.setitem(judges.JUDGES, "profanity_check", missing)
    loaded, why = judges.load_judges(["profanity_check"])
    assert loaded == {} and why == {"profanity_check": "not installed: pip install 'rlhf[judge]' (alt-profanity-check)"}
