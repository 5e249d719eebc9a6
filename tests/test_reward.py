import math
from pathlib import Path

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.config import RewardDataConfig, load_config
from rlhf.errors import UserError
from rlhf.reward import RewardScorer, class_weights, label_index, load_classifier, load_labelled, scored_texts

from .conftest import write_jsonl


def test_a_classifier_built_to_train_starts_from_its_seed_whatever_ran_before(trained_reward):
    config, _ = trained_reward
    name = config.reward.model  # the tiny world's encoder config, resolved

    def build(before: int, seed: int) -> tuple[dict, float]:
        torch.manual_seed(before)  # whatever the process did first (inside `rlhf run`: SFT)
        model, _ = load_classifier(name, from_scratch=True, init_seed=seed)
        return model.state_dict(), torch.rand(1).item()  # the process's stream goes on untouched

    (first, after0), (second, after1) = build(0, 3), build(1, 3)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (after0, after1) == (_next_after_seed(0), _next_after_seed(1))
    other, _ = build(0, 4)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def _next_after_seed(seed: int) -> float:
    torch.manual_seed(seed)
    return torch.rand(1).item()


@pytest.fixture(scope="module")
def scorer(trained_reward):
    config, _ = trained_reward
    model, tok = load_classifier(str(config.run_dir / "reward" / "model"))
    return RewardScorer(model, tok, "non-toxic", batch_size=3)  # reward = log p(non-toxic), as reward.output's default


def test_scorer_strips_special_tokens(scorer):
    clean = scorer.score(["you are a stupid idiot"]).rewards
    noisy = scorer.score(["<pad> you are a stupid idiot</s><pad><pad>"]).rewards
    torch.testing.assert_close(clean, noisy)


def test_batching_matches_one_by_one(scorer):
    texts = ["#Person1# books a table.", "shut up you moron", "", "a much longer text " * 5, "ok"]
    batched = scorer.score(texts)
    single = [scorer.score([t]) for t in texts]
    torch.testing.assert_close(batched.rewards, torch.cat([s.rewards for s in single]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.toxic_probs, torch.cat([s.toxic_probs for s in single]), atol=1e-5, rtol=1e-5)


def test_empty_string_and_outputs(scorer):
    scores = scorer.score(["", "   "])
    assert scores.rewards.shape == (2,) and torch.isfinite(scores.rewards).all()
    assert ((scores.toxic_probs >= 0) & (scores.toxic_probs <= 1)).all()
    assert scorer.score([]).rewards.shape == (0,)


def test_probability_output_is_non_toxic_prob(scorer):
    prob = RewardScorer(scorer.model, scorer.tokenizer, "non-toxic", output="probability")
    s = prob.score(["hello there"])
    torch.testing.assert_close(s.rewards, 1 - s.toxic_probs)


def test_scorer_applies_clean_at(scorer):
    texts = ["hello there", "you are kind", "the sales plan is due on Friday"]
    plain = scorer.rewards(texts)  # log_probability, the default
    cap = float(plain.max()) - 1e-3  # below the cleanest text's reward: that one must be clamped
    capped = RewardScorer(scorer.model, scorer.tokenizer, "non-toxic", output="log_probability",
                          clean_at=math.exp(cap)).rewards(texts)
    assert capped.max() <= cap + 1e-6 and torch.equal(capped, plain.clamp(max=cap))


def test_label_mapping_and_missing_label(scorer):
    assert label_index(scorer.model, "non-toxic") == 0 and label_index(scorer.model, "toxic") == 1
    with pytest.raises(UserError, match=r"do not include the non-toxic label 'nothate'"):
        label_index(scorer.model, "nothate")


def test_scored_texts_with_prompt():
    assert scored_texts(["P"], ["R"], with_prompt=True) == ["P R"]
    assert scored_texts(["P"], ["R"], with_prompt=False) == ["R"]


def test_label_values_outside_declared(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "maybe"}, {"text": "b", "label": "1"}] * 10)
    with pytest.raises(UserError, match=r"values \['maybe'\] besides the declared"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_single_class_training_set(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": 0} for i in range(30)])
    with pytest.raises(UserError, match="single class"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_non_string_text(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": i, "label": i % 2} for i in range(30)])
    with pytest.raises(UserError, match="non-string value 0"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_missing_columns(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"comment": "x", "label": 1}] * 10)
    with pytest.raises(UserError, match="no column 'text'"):
        load_labelled(RewardDataConfig(source=src), seed=0)


def test_model_that_is_not_a_classifier(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4, vocab_size=10,
             architectures=["T5ForConditionalGeneration"]).save_pretrained(tmp_path / "t5")
    with pytest.raises(UserError, match="could not load reward model|not a sequence classifier"):
        load_classifier(str(tmp_path / "t5"))


def test_a_fraction_that_leaves_a_reward_split_empty_names_source_split_and_key(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(5)])
    with pytest.raises(UserError, match=rf"reward data {src}: cutting the 'test' split from 5 'train' rows with "
                                        rf"reward.data.test_fraction=0.9 leaves 0 for 'train'"):
        load_labelled(RewardDataConfig(source=src, test_fraction=0.9), seed=0)


def tiny_classifier_folder(tmp_path) -> Path:
    """A saved two-class BERT classifier (safetensors) with its tokenizer, classifier bias 123."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, num_labels=2,
        architectures=["BertForSequenceClassification"]))
    with torch.no_grad():
        model.classifier.bias.fill_(123.0)
    model.save_pretrained(folder)
    return folder


def test_pickled_weights_are_refused_beside_a_stray_safetensors_file(tmp_path, monkeypatch):
    """Another .safetensors file (a value head) beside pytorch_model.bin must not let the pickle load."""
    from safetensors.torch import save_file

    import rlhf.reward

    folder = tiny_classifier_folder(tmp_path)
    assert load_classifier(str(folder))[0].classifier.bias.tolist() == [123.0, 123.0]
    state = load_classifier(str(folder))[0].state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    save_file({"x": torch.zeros(1)}, str(folder / "value_head.safetensors"))
    with pytest.raises(UserError, match=r"has no .safetensors weights to load \(no model.safetensors; found "
                                        r"pytorch_model.bin: pickle files are never loaded\)"):
        load_classifier(str(folder))
    monkeypatch.setattr(rlhf.reward, "_check_local_classifier", lambda *a: None)
    with pytest.raises(UserError, match="reward model"):  # and from_pretrained itself reads safetensors only
        load_classifier(str(folder))


def test_class_weights_balance():
    torch.testing.assert_close(class_weights([0, 0, 0, 1]), torch.tensor([2 / 3, 2.0]))


def test_bounded_reward_saturates_for_clean_text():
    from rlhf.reward import reward_from_logits

    # non-toxic = class 0; a clean text, then the same text scored ever more confidently clean
    logits = torch.tensor([[4.0, -4.0], [8.0, -8.0], [16.0, -16.0], [-3.0, 3.0]])
    log_probs = logits.log_softmax(-1)
    bounded = reward_from_logits(logits, log_probs, 0, "log_probability")
    assert (bounded <= 0).all()
    assert bounded[2] - bounded[1] < 1e-6 < bounded[1] - bounded[3]  # no gain once clean; a strong pull from toxic
    assert bounded[1] - bounded[0] < 1e-3
    prob = reward_from_logits(logits, log_probs, 0, "probability")
    assert ((0 <= prob) & (prob <= 1)).all() and prob[2] - prob[1] < 1e-6
    lab = reward_from_logits(logits, log_probs, 0, "logit")
    assert lab[2] - lab[1] == 8.0  # the lab's logit keeps paying as the classifier grows more confident


def test_clean_at_makes_the_reward_flat_for_clean_text():
    from rlhf.reward import reward_from_logits

    # p(non-toxic) = 0.5, 0.98, 0.9975, 0.99999: the last two are both "clean" at clean_at 0.99
    p = torch.tensor([0.5, 0.98, 0.9975, 0.99999])
    logits = torch.stack([p.log(), (1 - p).log()], -1)
    log_probs = logits.log_softmax(-1)
    flat = reward_from_logits(logits, log_probs, 0, "log_probability", clean_at=0.99)
    assert flat[2] == flat[3] and abs(flat[3].item() - math.log(0.99)) < 1e-6
    assert flat[0] < flat[1] < flat[2]  # below the cap every step towards clean still pays
    prob = reward_from_logits(logits, log_probs, 0, "probability", clean_at=0.99)
    assert prob[2] == prob[3] and abs(prob[3].item() - 0.99) < 1e-6 and prob[1] < prob[2]


def test_several_raw_values_can_mean_toxic(tmp_path):
    """Davidson et al.: class 0 hate, 1 offensive (both toxic), 2 neither."""
    rows = [{"tweet": f"text {i}", "class": i % 3} for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = RewardDataConfig(source=path, text_column="tweet", label_column="class", toxic_value=["0", "1"],
                           non_toxic_value="2")
    splits = load_labelled(cfg, seed=0)
    labels = [y for s in splits.values() for y in s["labels"]]
    assert sorted(labels) == [0] * 10 + [1] * 20
    with pytest.raises(UserError, match=r"\['1'\] are declared both toxic"):
        load_labelled(RewardDataConfig(source=path, text_column="tweet", label_column="class",
                                       toxic_value=["0", "1"], non_toxic_value=["1", "2"]), seed=0)


DAVIDSON_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reward_davidson.yaml"


def davidson_csv(path, classes: list[int]) -> dict[str, int]:
    """A CSV laid out as Davidson et al.'s labeled_data.csv (unnamed index column, annotator counts,
    class, quoted tweets with commas); returns tweet -> class."""
    tweets = {f"tweet {i}, with a comma and &amp; an entity": c for i, c in enumerate(classes)}
    rows = [f'{i},3,{int(c == 0) * 3},{int(c == 1) * 3},{int(c == 2) * 3},{c},"{t}"'
            for i, (t, c) in enumerate(tweets.items())]
    path.write_text(",count,hate_speech,offensive_language,neither,class,tweet\n" + "\n".join(rows) + "\n")
    return tweets


def test_davidson_config_maps_hate_and_offensive_to_toxic(tmp_path):
    tweets = davidson_csv(tmp_path / "labeled_data.csv", [i % 3 for i in range(60)])
    config = load_config(DAVIDSON_CONFIG, [f"reward.data.source={tmp_path / 'labeled_data.csv'}"])
    splits = load_labelled(config.reward.data, config.seed)
    assert {k: len(v) for k, v in splits.items()} == {"train": 43, "validation": 5, "test": 12}
    for split in splits.values():
        assert split["labels"] == [int(tweets[t] != 2) for t in split["text"]]


def test_davidson_config_without_data_path_stops_with_one_line(tmp_path, capsys):
    assert cli_main(["reward", str(DAVIDSON_CONFIG), f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'reward.data.source' is not set" in err


def test_a_loaded_classifier_runs_no_hub_kernels(scorer):
    """transformers 5 turns Hub kernels on by default; on a GPU they are fetched from the Hub and run
    (remote code, and a crash offline), so loading turns them off."""
    assert scorer.model.use_kernels is False
