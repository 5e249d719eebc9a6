"""benchmarks/standins.py and benchmarks/smoke_lab.py: the hub-shaped stand-ins and the checks of
`make smoke-lab`. The checks are tested here on hand-made artifacts (no ../shared needed); the whole
smoke run is the slow test at the end, skipped only where ../shared/data is absent."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import smoke_lab, standins

ROOT = Path(__file__).resolve().parents[2]

TEST_ROW = {"fname": "test_7", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary1": "They greet.",
            "topic1": "greeting", "summary2": "Two people say hello.", "topic2": "hello",
            "summary3": "They greet.", "topic3": "greeting"}


def test_hub_rows_expand_the_test_split_one_row_per_reference():
    rows = standins.hub_rows([TEST_ROW], "test")
    assert [r["id"] for r in rows] == ["test_7_1", "test_7_2", "test_7_3"]
    assert [r["summary"] for r in rows] == ["They greet.", "Two people say hello.", "They greet."]
    assert {r["dialogue"] for r in rows} == {TEST_ROW["dialogue"]}
    assert set(rows[0]) == {"id", "dialogue", "summary", "topic"}


def test_hub_rows_rename_fname_to_id_in_train():
    row = {"fname": "train_3", "dialogue": "d", "summary": "s", "topic": "t"}
    assert standins.hub_rows([row], "train") == [{"id": "train_3", "dialogue": "d", "summary": "s", "topic": "t"}]


def test_missing_shared_says_which_files(tmp_path):
    assert "not found" in standins.missing_shared(tmp_path / "nope")
    (tmp_path / "t5-tokenizer").mkdir()
    (tmp_path / "t5-tokenizer" / "spiece.model").write_text("x")
    assert "dialogsum/dialogsum.test.jsonl" in standins.missing_shared(tmp_path)


def test_standins_refuse_an_output_folder_inside_the_repository(capsys):
    assert standins.main(["--out", str(ROOT / "standins-here")]) == 2
    assert "inside the repository" in capsys.readouterr().err
    assert not (ROOT / "standins-here").exists()


def test_random_t5_has_flan_t5_small_shape_and_its_own_head():
    model = standins.random_t5("small", boosted=[5])
    cfg = model.config
    assert (cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_decoder_layers, cfg.num_heads, cfg.vocab_size) == \
        (512, 64, 1024, 8, 8, 6, 32128)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 76_961_152  # google/flan-t5-small's count


def test_special_token_text_is_found():
    texts = {"a": ["fine text", "He says <extra_id_3> hi"], "b": ["<pad> x"]}
    problems = smoke_lab.special_token_problems(texts)
    assert len(problems) == 2 and "'<extra_id_3>' in a" in problems[0] and "'<pad>' in b" in problems[1]
    assert smoke_lab.special_token_problems({"a": ["#Person1# books a table."]}) == []


def records(refs_per_record: list[list[str]], ids=None) -> list[dict]:
    ids = ids or [f"test_{i}_1" for i in range(len(refs_per_record))]
    return [{"id": i, "references": refs, "before": {"greedy": "the cat sat", "samples": []}}
            for i, refs in zip(ids, refs_per_record)]


def test_grouping_check_accepts_one_record_per_dialogue_with_all_references():
    rows = [{"id": f"test_0_{k}", "dialogue": "d0", "summary": f"s{k}"} for k in (1, 2, 3)]
    rows += [{"id": f"test_1_{k}", "dialogue": "d1", "summary": f"t{k}"} for k in (1, 2, 3)]
    groups = smoke_lab.expected_groups(rows)
    assert groups == {"test_0_1": ["s1", "s2", "s3"], "test_1_1": ["t1", "t2", "t3"]}
    assert smoke_lab.grouping_problems(records([["s1", "s2", "s3"], ["t1", "t2", "t3"]]), groups) == []


@pytest.mark.parametrize("recs, message", [
    (records([["s1"], ["t1", "t2", "t3"]]), "test_0_1 has 1 references, the Hub rows give 3"),
    (records([["s1", "s2", "s3"]] * 2, ids=["test_0_1", "test_0_2"]), "is not the first row"),
    (records([["s1", "s2", "s3"]]), "wrote 1 records for 2 distinct test dialogues"),
])
def test_grouping_check_catches_ungrouped_records(recs, message):
    groups = {"test_0_1": ["s1", "s2", "s3"], "test_1_1": ["t1", "t2", "t3"]}
    assert any(message in p for p in smoke_lab.grouping_problems(recs, groups))


def test_rouge_check_catches_a_report_on_the_first_reference_only():
    from rlhf.metrics import rouge_per_prediction

    recs = records([["the cat sat", "a dog ran far away"], ["the cat", "the cat sat down"]])
    greedy = [r["before"]["greedy"] for r in recs]
    first = sum(s["rougeL"] for s in rouge_per_prediction(greedy, [r["references"][:1] for r in recs])) / 2
    every = sum(s["rougeL"] for s in rouge_per_prediction(greedy, [r["references"] for r in recs])) / 2
    report = lambda value: {"protocol": {"quality": {"all": {"rougeL": {"before": value}}}}}  # noqa: E731
    assert smoke_lab.rouge_problems(recs, report(every))[0] == []
    assert "not the all-references mean" in smoke_lab.rouge_problems(recs, report(first))[0][0]


def test_rouge_check_refuses_to_pass_when_it_cannot_discriminate():
    recs = records([["x y z", "q r s"]])  # "the cat sat" scores 0 against both
    problems, _ = smoke_lab.rouge_problems(recs, {"protocol": {"quality": {"all": {"rougeL": {"before": 0.0}}}}})
    assert "cannot tell all references from the first" in problems[0]


def test_progress_check_wants_plain_lines_for_rl_and_each_sft_variant():
    good = "sft/full: 2/2 (100%), 3.4s/it, ETA 0s\nsft/lora: 2/2 (100%), 1s/it, ETA 0s\nrl: 3/3 (100%), 6s/it\n"
    assert smoke_lab.progress_problems(good, ["full", "lora"], 3) == []
    assert smoke_lab.progress_problems(good.replace("rl: 3/3", "ppo done"), ["full", "lora"], 3) == \
        ["no progress line for rl"]
    assert "not rl.steps=4" in smoke_lab.progress_problems(good, ["full", "lora"], 4)[0]
    assert "carriage returns" in smoke_lab.progress_problems(good + "rl:  50%|#####\r", ["full", "lora"], 3)[0]


def test_smoke_lab_skips_with_one_line_without_shared_data(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smoke_lab.py"), "--shared", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.count("\n") == 1 and out.stdout.startswith("smoke-lab: skipped:")


@pytest.mark.slow
def test_smoke_lab_runs_the_lab_config_on_hub_shaped_standins():
    if reason := standins.missing_shared(standins.SHARED_DATA):
        pytest.skip(f"smoke-lab needs ../shared/data: {reason}")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smoke_lab.py")], capture_output=True, text=True,
                         timeout=1500, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "smoke-lab: passed" in out.stdout
