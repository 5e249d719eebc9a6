import pytest

from rlhf.config import load_config
from rlhf.configload import parse_overrides
from rlhf.errors import UserError

from .conftest import write


def test_unknown_top_level_key_names_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'sede' in the top level; did you mean 'seed'"):
        load_config(write(tmp_path, {"sede": 1}))


def test_unknown_nested_key_names_section_and_closest(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, {"prompt": {"max_new_token": 3}}))
    msg = str(err.value)
    assert "'max_new_token'" in msg and "section 'prompt'" in msg and "'max_new_tokens'" in msg


def test_unknown_key_in_list_item(tmp_path):
    with pytest.raises(UserError, match=r"section 'prompt.settings\[0\]'.*'top_p'"):
        load_config(write(tmp_path, {"prompt": {"settings": [{"name": "x", "top_pp": 0.5}]}}))


@pytest.mark.parametrize("raw, key, value", [
    ({"prompt": {"batch_size": -4}}, "prompt.batch_size", "-4"),
    ({"prompt": {"batch_size": 0}}, "prompt.batch_size", "0"),
    ({"prompt": {"settings": [{"top_p": 1.5}]}}, r"prompt.settings\[0\].top_p", "1.5"),
    ({"prompt": {"settings": [{"top_p": 0}]}}, r"prompt.settings\[0\].top_p", "0"),
    ({"data": {"test_fraction": 1.2}}, "data.test_fraction", "1.2"),
    ({"prompt": {"shots": [0, -1]}}, "prompt.shots", "-1"),
])
def test_impossible_values_name_key_and_value(tmp_path, raw, key, value):
    with pytest.raises(UserError, match=rf"'{key}'.*{value}"):
        load_config(write(tmp_path, raw))


@pytest.mark.parametrize("raw, key", [
    ({"seed": "abc"}, "seed"),
    ({"seed": True}, "seed"),
    ({"prompt": {"batch_size": 2.5}}, "prompt.batch_size"),
    ({"model": {"trust_remote_code": "yes"}}, "model.trust_remote_code"),
    ({"prompt": {"shots": 3}}, "prompt.shots"),
    ({"model": "t5"}, "model"),
    ({"data": {"template": "poem"}}, "data.template"),
])
def test_wrong_types_name_key(tmp_path, raw, key):
    with pytest.raises(UserError, match=rf"'{key}'"):
        load_config(write(tmp_path, raw))


def test_overrides_are_typed(tmp_path):
    config = load_config(write(tmp_path, {}), ["data.max_samples=200", "prompt.shots=[0,2]",
                                               "seed=7",
                                               "model.trust_remote_code=true", "run_name=abc"])
    assert config.data.max_samples == 200 and config.prompt.shots == [0, 2]
    assert config.seed == 7 and config.model.trust_remote_code is True and config.run_name == "abc"


def test_unquoted_no_is_the_no_choice(tmp_path):
    """YAML reads `no` as false: `model.mixed_precision=no` (what the lab config tells CPU users) still works."""
    assert load_config(write(tmp_path, {}), ["model.mixed_precision=no"]).model.mixed_precision == "no"
    assert load_config(write(tmp_path, {"model": {"mixed_precision": False}})).model.mixed_precision == "no"
    with pytest.raises(UserError, match=r"'model.mixed_precision': value True is not one of"):
        load_config(write(tmp_path, {}), ["model.mixed_precision=yes"])


def test_float_override_accepts_int(tmp_path):
    assert load_config(write(tmp_path, {}), ["data.test_fraction=0"]).data.test_fraction == 0.0


@pytest.mark.parametrize("override, match", [
    ("data.max_sample=3", r"unknown config key 'max_sample' in section 'data'.*'max_samples'"),
    ("data.max_samples=-3", r"'data.max_samples'.*-3"),
    ("data.max_samples=many", r"'data.max_samples'.*many"),
    ("seed", r"not of the form"),
])
def test_bad_overrides(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        load_config(write(tmp_path, {}), [override])


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nmodel: x\n  name: y\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line 3"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, message", [
    ("rl.learning_rate=.inf", r"'rl.learning_rate': value inf is not a finite number"),
    ("rl.kl.init_kl_coef=.nan", r"'rl.kl.init_kl_coef': value nan is not a finite number"),
    ("seed=99999999999999999999", r"'seed': value 99999999999999999999 is out of range"),
    ("seed=4294967296", r"'seed': value 4294967296 must be in \[0, 4294967295\]"),
    ("run_name=../x", r"'run_name': value '../x' must be a plain folder name"),
    ("reward.data.toxic_value=yes", r"'reward.data.toxic_value': expected text, got True .*quote the value"),
])
def test_values_no_stage_could_use(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, {"seed": 1}), [override])


def test_an_empty_config_file_is_an_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(UserError, match=r"empty.yaml is empty"):
        load_config(tmp_path / "empty.yaml")


def test_a_config_file_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"seed: 1\nrun_name: caf\xe9\n")
    with pytest.raises(UserError, match=r"latin1.yaml is not valid UTF-8 \(line 2, byte offset 21: 0xe9\)"):
        load_config(path)
