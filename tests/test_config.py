from pathlib import Path

import pytest
import yaml

from lightning_fusion.config import (
    ExperimentConfig,
    apply_overrides,
    flatten,
    load_config,
    parse_override_value,
    resolve,
    to_dict,
)
from lightning_fusion.errors import ConfigError

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


def test_defaults_resolve_completely():
    config = load_config()
    assert isinstance(config, ExperimentConfig)
    assert config.model.encoders["image"]["name"] == "timm"
    assert "backbone" in config.model.encoders["image"]  # defaults filled in
    assert config.data.reader["name"] == "demo_mpi"
    assert to_dict(resolve(to_dict(config))) == to_dict(config)  # resolving is idempotent


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_loads(path):
    load_config(path)


def test_demo_yaml_is_the_builtin_default():
    assert to_dict(load_config(Path(__file__).parents[1] / "experiments" / "demo.yaml")) == to_dict(load_config())


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "optim": {"lr": 0.01}, "model": {"modalities": ["image"]}}))
    config = load_config(
        path,
        {"optim.lr": "1e-4", "trainer.max_epochs": 3, "model.head.widths": [8, 4], "model.head.dropouts": [0, 0.1]},
    )
    assert config.name == "x"
    assert config.optim.lr == pytest.approx(1e-4)  # "1e-4" (a YAML string) is coerced to float
    assert config.trainer.max_epochs == 3
    assert config.model.modalities == ["image"]
    assert config.model.head.widths == [8, 4]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrr": 0.1}, r"optim\.lrr: unknown config key 'lrr'; did you mean 'lr'"),
        ({"trainr.max_epochs": 1}, r"trainr: unknown config key 'trainr'; did you mean 'trainer'"),
        (
            {"model.fusion.name": "conact"},
            r"model\.fusion\.name: unknown fusion strategy 'conact'; did you mean 'concat'",
        ),
        ({"model.encoders.image.name": "tim"}, r"unknown encoder 'tim'; did you mean 'timm'"),
        ({"model.encoders.image.backbone": "resnet181"}, r"unknown timm backbone 'resnet181'; did you mean 'resnet18'"),
        ({"model.encoders.tabular.widthz": [3]}, r"model\.encoders\.tabular\.widthz: unknown config key.*'widths'"),
        ({"data.reader.name": "mpii"}, r"unknown dataset reader 'mpii'; did you mean 'mpi'"),
        ({"optim.optimizer": "adamm"}, r"unknown optimizer 'adamm'; did you mean 'adam"),
        ({"optim.lr": "fast"}, r"optim\.lr: expected float, got 'fast'"),
        ({"trainer.max_epochs": 0}, r"trainer: max_epochs must be >= 1"),
        (
            {"model.head.widths": [8, 4]},
            r"model\.head: widths \[8, 4\] and dropouts \[0\.2\] must have the same length",
        ),
        ({"model.modalities": ["image", "signal"]}, r"modality 'signal' has no encoder"),
        ({"model.modalities": []}, r"at least one modality"),
        ({"data.split.train": 0.9}, r"must sum to 1"),
        ({"data.augment.brightness": [1.2, 0.8]}, r"brightness"),
        ({"data.tabular.impute": "medain"}, r"did you mean 'median'"),
    ],
)
def test_bad_config_names_the_key_and_suggests(overrides, message):
    with pytest.raises((ConfigError, KeyError), match=message):
        load_config(None, overrides)


def test_missing_or_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_override_helpers():
    assert parse_override_value("[image, tabular]") == ["image", "tabular"]
    assert parse_override_value("null") is None
    assert parse_override_value("true") is True
    assert apply_overrides({"a": {"b": 1}}, {"a.c.d": 2}) == {"a": {"b": 1, "c": {"d": 2}}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, {"a.b": 2})
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


def test_components_may_be_given_by_name_alone():
    config = load_config(
        None, {"data.reader": "mpi", "model.fusion": "gated", "model.encoders.tabular": "mlp", "data.root": "x"}
    )
    assert config.data.reader["name"] == "mpi" and config.data.reader["views"]  # defaults filled
    assert config.model.fusion["name"] == "gated" and config.model.fusion["d"] == 64
    assert config.model.encoders["tabular"]["widths"] == [64, 32]
