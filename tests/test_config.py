from pathlib import Path

import pytest

from rlhf.config import ExperimentConfig, load_config, to_yaml

from .conftest import write

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_repo_config_loads_and_validates(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.run_name == path.stem
    # the config as written into a run directory loads back to the same values
    (tmp_path / "resolved.yaml").write_text(to_yaml(config))
    assert load_config(tmp_path / "resolved.yaml") == config


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, {}))
    assert config.output_dir == "runs" and config.run_name == "exp"
    assert config.run_dir == Path("runs") / "exp"


ACCELERATE = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(path)
    assert cfg.num_processes > 1 and cfg.mixed_precision == "bf16"


def test_output_dir_expands_home_and_run_name_stays_inside(tmp_path):
    config = load_config(write(tmp_path, {"seed": 1}), ["output_dir=~/runs"])
    assert config.output_dir == str(Path.home() / "runs") and config.run_dir == Path.home() / "runs" / "exp"
