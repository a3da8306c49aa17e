"""Typed experiment configuration: plain dataclasses, YAML files, dotted command-line overrides.

An experiment is a tree of dataclasses (:class:`ExperimentConfig` at the root). YAML files and
``--section.key value`` overrides are merged as plain dicts, then built into the dataclasses; an
unknown key, a wrong type or a bad value raises :class:`ConfigError` naming the dotted path and the
closest valid keys. Components chosen by name (encoders, fusions, dataset readers) are written as
``{name: <registry name>, <option>: <value>, ...}``; their options are checked against the
``config`` dataclass registered with that name and filled with its defaults, so a resolved config is
complete and reproducible on its own (it is what the LightningModule stores as hyperparameters).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_fusion.errors import ConfigError, UnknownNameError
from lightning_fusion.registry import Registry, suggest


# --------------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    """Patient-level stratified split fractions (ignored when the dataset has predefined splits)."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 42
    use_predefined: bool = True  # use the dataset's own split when it has one

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a fraction in (0, 1), got {getattr(self, name)}")
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {self.train + self.val + self.test:.3f}")


@dataclass
class AugmentConfig:
    """Train-only image augmentation; medically safe defaults (no flips: left/right anatomy matters)."""

    enabled: bool = True
    rotate_limit: float = 15.0  # degrees, ±
    shift_limit: float = 0.03  # fraction of the image size, ±
    brightness: tuple[float, float] = (0.8, 1.2)  # multiplicative range
    p: float = 0.5  # probability of each transform

    def __post_init__(self) -> None:
        if not 0 <= self.rotate_limit <= 180:
            raise ValueError(f"rotate_limit must be in [0, 180] degrees, got {self.rotate_limit}")
        if not 0 <= self.shift_limit < 0.5:
            raise ValueError(f"shift_limit must be in [0, 0.5), got {self.shift_limit}")
        low, high = self.brightness
        if not 0 < low <= high:
            raise ValueError(f"brightness must be (low, high) with 0 < low <= high, got {self.brightness}")
        if not 0 <= self.p <= 1:
            raise ValueError(f"p must be a probability, got {self.p}")


@dataclass
class TabularConfig:
    """Tabular preprocessing, fitted on training patients only."""

    impute: str = "median"  # median | mean | most_frequent
    scale: bool = True  # z-score with training mean/std
    missing_indicators: bool = False  # add a 0/1 column per feature that had missing training values
    select_k: int | None = None  # ANOVA F-test top-k (SelectKBest(f_classif)); None keeps all

    def __post_init__(self) -> None:
        if self.impute not in ("median", "mean", "most_frequent"):
            raise UnknownNameError(suggest(self.impute, ["median", "mean", "most_frequent"], "imputation"))
        if self.select_k is not None and self.select_k < 1:
            raise ValueError(f"select_k must be >= 1 or null, got {self.select_k}")


@dataclass
class SignalConfig:
    """1-D signal normalisation (e.g. ECG leads).

    ``lead``: z-score per lead with mean/std fitted on training patients only; ``global``: one
    mean/std over all leads, fitted on train; ``sample``: each recording scaled by its own per-lead
    mean/std (nothing fitted); ``none``: raw values.
    """

    normalise: str = "lead"

    def __post_init__(self) -> None:
        choices = ["lead", "global", "sample", "none"]
        if self.normalise not in choices:
            raise UnknownNameError(suggest(self.normalise, choices, "signal normalisation"))


@dataclass
class DataConfig:
    """Which dataset, where it is, and how it becomes batches."""

    reader: dict[str, Any] = field(default_factory=lambda: {"name": "demo_mpi"})
    root: str | None = None  # dataset folder; the demo reader generates its cohort here (or in a cache)
    exclude_labels: list[str] = field(default_factory=list)
    # keep patients that lack some of the model's modalities (at least one present); their absent
    # modality is masked by the fusion, so only fusions that support missing modalities accept it
    keep_missing_modalities: bool = False
    image_size: int = 64
    batch_size: int = 32
    num_workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class HeadConfig:
    """Classifier head after the fusion: hidden widths with one dropout rate each."""

    widths: list[int] = field(default_factory=lambda: [64])
    dropouts: list[float] = field(default_factory=lambda: [0.2])

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.dropouts):
            raise ValueError(f"widths {self.widths} and dropouts {self.dropouts} must have the same length")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be >= 1, got {self.widths}")
        if any(not 0 <= d < 1 for d in self.dropouts):
            raise ValueError(f"dropouts must be in [0, 1), got {self.dropouts}")


@dataclass
class ModelConfig:
    """Which modalities, how each is encoded, and how they are fused.

    CNN, ANN and fusion models are one override apart: ``--model.modalities [image]`` trains the
    image-only CNN, ``[tabular]`` the tabular-only ANN, ``[image,tabular]`` the fusion.
    """

    modalities: list[str] = field(default_factory=lambda: ["image", "tabular"])
    encoders: dict[str, dict[str, Any]] = field(
        # resnet10t: the fastest timm ResNet that learns the demo cohort from scratch in < 1 min on 2 CPU cores
        default_factory=lambda: {"image": {"name": "timm", "backbone": "resnet10t"}, "tabular": {"name": "mlp"}}
    )
    fusion: dict[str, Any] = field(default_factory=lambda: {"name": "concat"})
    head: HeadConfig = field(default_factory=HeadConfig)
    # ModDrop-style training: each modality of a sample dropped with this probability (at least one kept);
    # only for fusions that support missing modalities
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if not self.modalities:
            raise ValueError("modalities must name at least one modality")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities has duplicates: {self.modalities}")
        for modality in self.modalities:
            if modality not in self.encoders:
                raise ValueError(
                    f"modality {modality!r} has no encoder in model.encoders (it has {sorted(self.encoders)})"
                )


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and loss weighting."""

    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-3
    weight_decay: float = 1e-4
    plateau_factor: float = 0.5  # ReduceLROnPlateau on val/loss
    plateau_patience: int = 2
    class_weights: bool = True  # inverse-frequency weights from the training split

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise UnknownNameError(suggest(self.optimizer, ["adam", "adamw"], "optimizer"))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")


@dataclass
class TrainerConfig:
    """Passed through to ``lightning.Trainer`` (accelerator, devices, strategy and num_nodes as is)."""

    max_epochs: int = 15
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: bf16-mixed on a GPU that supports it, 32-true otherwise
    deterministic: bool = False
    early_stopping_patience: int = 5  # epochs without val/loss improvement
    gradient_clip_val: float | None = None
    fast_dev_run: bool = False
    limit_train_batches: float | None = None
    log_every_n_steps: int = 1  # metrics are logged per epoch; this only sets Lightning's step cadence

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            # Spawned workers keep the test predictions to themselves; the run's artifacts need them.
            raise ValueError(f"strategy {self.strategy!r} is not supported by fit; use 'ddp' (one process per device)")

    @property
    def several_processes(self) -> bool:
        """Whether this config asks for more than one training process (devices, nodes or a DDP strategy).

        ``devices: auto`` counts as one here; on a multi-GPU machine it may still become several.
        """
        devices = self.devices
        many = (isinstance(devices, int) and (devices > 1 or devices == -1)) or (
            isinstance(devices, list) and len(devices) > 1
        )
        return many or self.num_nodes > 1 or self.strategy.startswith("ddp")


@dataclass
class EvaluationConfig:
    """How the test set is reported: bootstrap intervals, calibration, optional temperature scaling."""

    bootstrap_resamples: int = 2000  # stratified by class; >= 1000
    confidence: float = 0.95
    bootstrap_seed: int = 0
    calibration_bins: int = 15
    temperature_scaling: bool = False  # fit one temperature on validation predictions; report calibrated too
    explain_patients: int = 4  # explanations (Grad-CAM, attributions, modality drops) of the first N test patients

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 1000:
            raise ValueError(f"bootstrap_resamples must be >= 1000, got {self.bootstrap_resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.calibration_bins < 2:
            raise ValueError(f"calibration_bins must be >= 2, got {self.calibration_bins}")
        if self.explain_patients < 0:
            raise ValueError(f"explain_patients must be >= 0, got {self.explain_patients}")


@dataclass
class TrackingConfig:
    """Where MLflow records the run."""

    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    artifact_root: str = "mlruns"  # artifacts of new experiments in a local store
    experiment: str = "lightning_fusion"
    run_name: str | None = None
    log_checkpoint: bool = True
    log_model: bool = True  # the best model as an MLflow pyfunc model (``model``): mlflow models serve


@dataclass
class ExperimentConfig:
    """One reproducible experiment: data, model, optimisation, trainer and tracking."""

    name: str = "demo"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------------------------------
# Building dataclasses from plain data
# --------------------------------------------------------------------------------------------------
def build_dataclass(cls: type, data: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name the dotted path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{key_path}: " + suggest(str(key), list(fields), "config key"))
        kwargs[key] = _coerce(hints[key], value, key_path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, UnknownNameError) as err:  # UnknownNameError: a bad choice among names
        raise ConfigError(f"{path or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        item = args[1] if args else Any
        return {str(k): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def resolve_component(registry: Registry, value: Any, path: str) -> dict[str, Any]:
    """Check a ``{name: ..., options...}`` component against its registered ``config`` dataclass.

    Returns the complete component dict (all options, defaults filled) with ``name`` first.
    """
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or "name" not in value:
        raise ConfigError(f"{path}: expected {{name: <{registry.what}>, ...options}}, got {value!r}")
    name = str(value["name"])
    try:
        entry = registry.entry(name)
    except UnknownNameError as err:
        raise ConfigError(f"{path}.name: {err}") from None
    options = {k: v for k, v in value.items() if k != "name"}
    config_cls = entry.metadata.get("config")
    if config_cls is None:
        if options:
            raise ConfigError(f"{path}: {registry.what} {name!r} takes no options, got {sorted(options)}")
        return {"name": name}
    built = build_dataclass(config_cls, options, path)
    return {"name": name, **dataclasses.asdict(built)}


def component_options(component: Mapping[str, Any], registry: Registry) -> Any:
    """The typed options dataclass of a resolved component (``None`` if it takes no options)."""
    config_cls = registry.metadata(component["name"]).get("config")
    options = {k: v for k, v in component.items() if k != "name"}
    return build_dataclass(config_cls, options) if config_cls else None


# --------------------------------------------------------------------------------------------------
# Loading, overriding, resolving
# --------------------------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override_value(text: str) -> Any:
    """Parse a command-line value as YAML (``[a,b]``, ``null``, ``true``, ``3``), else keep the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted ``a.b.c`` key set to its value."""
    merged = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = merged
        keys = dotted.split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--{dotted}: {key!r} holds {child!r}, not a section")
            node = child
        node[keys[-1]] = value
    return merged


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(data: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build and fully validate an :class:`ExperimentConfig` (components included) from plain data.

    ``data`` is laid over the defaults, so ``{"model": {"encoders": {"image": {"backbone": "x"}}}}``
    changes one option of the default image encoder rather than replacing it.
    """
    from lightning_fusion.data.readers import READERS
    from lightning_fusion.encoders import ENCODERS
    from lightning_fusion.fusion import FUSIONS

    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    config = build_dataclass(
        ExperimentConfig, deep_merge(_plain(dataclasses.asdict(ExperimentConfig())), _component_shorthand(data or {}))
    )
    config.data.reader = resolve_component(READERS, config.data.reader, "data.reader")
    model = config.model
    model.encoders = {
        modality: resolve_component(ENCODERS, encoder, f"model.encoders.{modality}")
        for modality, encoder in model.encoders.items()
    }
    model.fusion = resolve_component(FUSIONS, model.fusion, "model.fusion")
    if config.evaluation.temperature_scaling and config.trainer.several_processes:
        raise ConfigError(
            "evaluation.temperature_scaling fits on validation predictions gathered in one process; "
            "set trainer.devices 1 (or turn temperature scaling off for a DDP run)"
        )
    fusion_meta = FUSIONS.metadata(model.fusion["name"])
    if config.data.keep_missing_modalities and len(model.modalities) > 1 and not fusion_meta.get("supports_missing"):
        raise ConfigError(
            f"data.keep_missing_modalities: fusion {model.fusion['name']!r} cannot handle a missing modality; use "
            f"one that masks it ({', '.join(FUSIONS.names(supports_missing=True))}) or set it false"
        )
    if len(model.modalities) < fusion_meta.get("min_modalities", 1):
        raise ConfigError(
            f"model.fusion: {model.fusion['name']!r} needs at least {fusion_meta['min_modalities']} modalities, "
            f"got {model.modalities}"
        )
    return config


def _component_shorthand(data: Mapping[str, Any]) -> dict[str, Any]:
    """``fusion: early`` / ``reader: mpi`` / ``encoders: {image: timm}`` mean ``{name: ...}`` with default options."""
    data = copy.deepcopy(dict(data))

    def named(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            section[key] = {"name": section[key]}

    named(data.get("data"), "reader")
    model = data.get("model")
    named(model, "fusion")
    if isinstance(model, dict) and isinstance(model.get("encoders"), dict):
        for modality in list(model["encoders"]):
            named(model["encoders"], modality)
    return data


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment: defaults, then the YAML file (if any), then dotted overrides."""
    data = load_yaml(path) if path else {}
    return resolve(apply_overrides(data, overrides or {}))


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain, YAML-safe data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML, in schema order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
