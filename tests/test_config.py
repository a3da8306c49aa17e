import copy
import pickle
import re
from pathlib import Path

import pytest
import yaml

from lightning_fusion.config import (
    Component,
    ExperimentConfig,
    apply_overrides,
    flatten,
    load_config,
    parse_override_value,
    resolve,
    resolve_component,
    to_dict,
    to_yaml,
)
from lightning_fusion.config.components import registry
from lightning_fusion.errors import ConfigError

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


def _components(config: ExperimentConfig) -> dict[str, Component]:
    return {
        "data.reader": config.data.reader,
        "model.fusion": config.model.fusion,
        **{f"model.encoders.{m}": encoder for m, encoder in config.model.encoders.items()},
    }


def test_defaults_resolve_completely():
    config = load_config()
    assert isinstance(config, ExperimentConfig)
    assert config.model.encoders["image"].name == "timm"
    assert config.model.encoders["image"].options.backbone == "resnet10t"  # the schema's default option
    assert config.model.encoders["image"].options.drop_rate == 0.0  # the encoder's own defaults filled in
    assert "backbone" in to_dict(config)["model"]["encoders"]["image"]
    assert config.data.reader.name == "demo_mpi"
    assert resolve(to_dict(config)) == config  # resolving is idempotent


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_resolves_to_typed_components_and_round_trips(path):
    config = load_config(path)
    for key, component in _components(config).items():
        assert isinstance(component, Component), key
        options_cls = registry(component.kind).metadata(component.name)["config"]
        if options_cls is None:
            assert component.options is None, key
        else:
            assert type(component.options) is options_cls, key
        assert component.metadata == registry(component.kind).metadata(component.name)
    # plain data and back: what a checkpoint stores reloads as the same config, also through YAML
    assert resolve(to_dict(config)) == config
    assert resolve(yaml.safe_load(to_yaml(config))) == config
    assert to_dict(resolve(to_dict(config))) == to_dict(config)
    assert pickle.loads(pickle.dumps(config)) == config and copy.deepcopy(config) == config


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
    assert config.data.reader.name == "mpi" and config.data.reader.options.views  # defaults filled
    assert config.model.fusion.name == "gated" and config.model.fusion.options.d == 64
    assert config.model.encoders["tabular"].options.widths == [64, 32]


# --------------------------------------------------------------------------------------------------
# Components, and how a component given in a file is laid over the default
# --------------------------------------------------------------------------------------------------
def test_a_component_is_resolved_once_into_its_typed_options():
    gated = resolve_component("fusion", {"name": "gated", "d": 8})
    assert gated == Component("fusion", "gated", registry("fusion").metadata("gated")["config"](d=8))
    assert gated.metadata["supports_missing"] is True and gated.metadata["min_modalities"] == 2
    assert resolve_component("fusion", "concat").options is None
    with pytest.raises(ConfigError, match=r"model\.fusion\.name: unknown fusion strategy 'gatd'; did you mean 'gated'"):
        resolve_component("fusion", "gatd", "model.fusion")
    with pytest.raises(ConfigError, match=r"model\.fusion: fusion strategy 'concat' takes no options, got \['d'\]"):
        resolve_component("fusion", {"name": "concat", "d": 8}, "model.fusion")


def test_a_component_keeps_the_defaults_of_its_own_name_only():
    # the same encoder: the option laid over the default image encoder, whose backbone stays
    same = load_config(None, {"model.encoders.image.pretrained": False, "model.encoders.image.drop_rate": 0.1})
    assert same.model.encoders["image"].options.backbone == "resnet10t"
    assert same.model.encoders["image"].options.drop_rate == 0.1
    # another encoder: its own defaults, nothing of the timm encoder's options
    other = load_config(None, {"model.encoders.image": {"name": "mlp", "widths": [8]}})
    assert other.model.encoders["image"] == resolve_component("encoder", {"name": "mlp", "widths": [8]})
    assert other.model.encoders["tabular"].name == "mlp"  # the other default encoder stays


# --------------------------------------------------------------------------------------------------
# Cross-field rules: checked at resolve, before any data is read
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_data_read(monkeypatch):
    """Every reader fails if it is built, prepares or reads anything; the data root does not exist."""

    def refuse(*args, **kwargs):
        raise AssertionError("the config read data")

    readers = registry("reader")
    for name in readers:
        for method in ("__init__", "prepare", "read"):
            monkeypatch.setattr(readers.get(name), method, refuse)
    return {"data.root": "/nonexistent/dataset"}


RULE_CASES = [
    # rule, broken overrides, message (names the keys and the choices), a fixed version
    (
        "every_modality_has_an_encoder",
        {"model.modalities": ["image", "signal"]},
        r"model\.modalities: modality 'signal' has no encoder in model\.encoders \(it has \['image', 'tabular'\]\); "
        r"add model\.encoders\.signal: \{name: <encoder>\} with one of "
        r"inception1d, mlp, resnet1d, signal_mlp, timm, xresnet1d",
        {"model.modalities": ["image", "signal"], "model.encoders.signal": "resnet1d"},
    ),
    (
        "fusion_takes_that_many_modalities",
        {"model.modalities": ["tabular"], "model.fusion": "gated"},
        r"model\.fusion: 'gated' needs at least 2 modalities, got \['tabular'\] \(model\.modalities\); "
        r"with 1 use concat",
        {"model.modalities": ["tabular"], "model.fusion": "concat"},
    ),
    (
        "kept_missing_modalities_need_a_masking_fusion",
        {"data.keep_missing_modalities": True, "model.fusion": "early"},
        r"data\.keep_missing_modalities: model\.fusion 'early' cannot handle a missing modality; "
        r"use one that masks it \(attention, gated, late_weighted, lmf\) or set it false",
        {"data.keep_missing_modalities": True, "model.fusion": "attention"},
    ),
    (
        "modality_dropout_needs_a_masking_fusion",
        {"model.modality_dropout": 0.25},
        r"model\.modality_dropout 0\.25: model\.fusion 'concat' cannot handle missing modalities.*"
        r"\(attention, gated, late_weighted, lmf\) or set model\.modality_dropout 0",
        {"model.modality_dropout": 0.25, "model.fusion": "late_weighted"},
    ),
    (
        "temperature_scaling_needs_one_process",
        {"evaluation.temperature_scaling": True, "trainer.devices": 2},
        r"evaluation\.temperature_scaling .* one process; set trainer\.devices 1",
        {"evaluation.temperature_scaling": True, "trainer.devices": 1},
    ),
    (
        "backbone_warmup_needs_one_process",
        {"model.encoders.image.warmup_epochs": 2, "trainer.strategy": "ddp"},
        r"model\.encoders\.image\.warmup_epochs 2: two-phase fine-tuning does not work with multi-process DDP.*"
        r"set trainer\.devices 1",
        {"model.encoders.image.warmup_epochs": 2, "trainer.devices": 1},
    ),
    (
        "schedule_and_loss_are_registered",
        {"optim.schedule": "cosin"},
        r"optim\.schedule: unknown learning-rate schedule 'cosin'; did you mean 'cosine'\?",
        {"optim.schedule": "cosine"},
    ),
    (
        "balanced_sampler_replaces_class_weights",
        {"data.sampler": "balanced"},
        r"data\.sampler balanced .* set optim\.class_weights false",
        {"data.sampler": "balanced", "optim.class_weights": False},
    ),
    (
        "fitted_threshold_needs_one_process",
        {"evaluation.threshold": "youden", "trainer.devices": 2},
        r"evaluation\.threshold youden is fitted on validation predictions .* set trainer\.devices 1",
        {"evaluation.threshold": "youden", "trainer.devices": 1},
    ),
]


@pytest.mark.parametrize(("rule", "broken", "message", "fixed"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_cross_field_rule_is_a_config_error_before_any_data_is_read(rule, broken, message, fixed, no_data_read):
    with pytest.raises(ConfigError, match=message):
        load_config(None, no_data_read | broken)
    load_config(None, no_data_read | fixed)


def test_every_rule_has_a_case():
    from lightning_fusion.config.rules import RULES

    assert [rule.__name__ for rule in RULES] == [case[0] for case in RULE_CASES]


def test_a_single_modality_cannot_miss_one():
    # nothing can be missing (or dropped) with one modality: keep_missing_modalities is harmless there
    load_config(None, {"model.modalities": ["image"], "data.keep_missing_modalities": True})


# --------------------------------------------------------------------------------------------------
# The generated --help
# --------------------------------------------------------------------------------------------------
def _schema_paths(cls=ExperimentConfig, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] is not Component:
            yield from _schema_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _help(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_fit_help_lists_every_config_key_with_type_default_and_doc(capsys):
    from lightning_fusion.fit.__main__ import main

    out = _help(main, ["--help"], capsys)
    assert "--config CONFIG" in out  # argparse's own help comes first
    lines = out.splitlines()
    batch = next(line for line in lines if "--data.batch_size " in line)
    assert batch.split() == ["--data.batch_size", "INT", "(default", "32)", "samples", "per", "batch"]
    paths = list(_schema_paths())
    assert len(paths) >= 60  # every section, not only the first
    for path in paths:
        shown = path + ".<modality>" if path == "model.encoders" else path
        assert any(line.lstrip().startswith(f"--{shown} ") for line in lines), path
    assert any(line.startswith("  --model.fusion FUSION") and "(default concat)" in line for line in lines)
    assert "--help-components fusion" in out
    assert "(default [0.8, 1.2])" in out and "(default null)" in out and "(default true)" in out


def test_every_schema_field_has_a_doc():
    import dataclasses
    import typing

    from lightning_fusion.config.help import field_docs

    def sections(cls):
        yield cls
        for hint in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(hint) and hint is not Component:
                yield from sections(hint)

    for cls in sections(ExperimentConfig):
        docs = field_docs(cls)
        assert all(docs.get(f.name) for f in dataclasses.fields(cls)), (cls.__name__, docs)


def test_component_help_lists_every_registered_name_and_its_options(capsys):
    from lightning_fusion.fit.__main__ import main

    for kind in ("reader", "encoder", "fusion"):
        out = _help(main, ["--help-components", kind], capsys)
        for name in registry(kind):
            assert f"\n{name}" in out, (kind, name)
    assert re.search(r"\n  --model\.fusion\.heads INT +\(default 4\)", out)
    assert "supports_missing true" in out and "concat  (level intermediate" in out


def test_compare_and_sweep_help_list_the_keys(capsys):
    from lightning_fusion.compare.__main__ import main as compare
    from lightning_fusion.sweep.__main__ import main as sweep

    assert "--model.modality_dropout FLOAT" in _help(compare, ["--help"], capsys)
    out = _help(sweep, ["--help"], capsys)  # a study file's overrides and space: keys without dashes
    assert "  optim.lr FLOAT" in out and "--optim.lr" not in out


def test_help_and_config_import_neither_torch_nor_the_registries():
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        "import lightning_fusion.config\n"
        "sys.argv = ['fit', '--help']\n"
        "try:\n"
        "    runpy.run_module('lightning_fusion.fit', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in sys.modules if m in ('torch', 'timm') or m.startswith('lightning_fusion.encoders')]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--data.batch_size INT" in out and "HEAVY []" in out
