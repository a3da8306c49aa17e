"""Study files (``ablations/<name>.yaml``): a base experiment, overrides, a metric, a search space.

Example::

    base: ../experiments/demo.yaml      # relative to this file
    overrides: {trainer.max_epochs: 10}
    metric: val/balanced_accuracy        # logged every validation epoch; the trial's value is its best
    direction: maximize
    trials: 20                           # a total: re-running the sweep resumes up to it
    sampler: {name: tpe, seed: 0}        # tpe | random | grid
    pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 2}   # median | hyperband | none
    cv: 5                                # optional: each trial = 5 fold models, value = their mean
    space:
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.fusion.name: {type: categorical, choices: [concat, gated, attention]}
      model.fusion.heads: {type: int, low: 1, high: 4, when: {model.fusion.name: attention}}

Space keys are dotted config paths (the ``--a.b.c`` overrides of ``fit``); a parameter with ``when``
is sampled only when the earlier parameters it names took one of the given values. Categorical
choices may be lists (``[[image], [tabular], [image, tabular]]``). :func:`load_study` checks
everything up front: unknown keys, an empty choice list, a bad range, a ``when`` on an unknown or
later parameter, and every choice and range end composed into the base experiment (so an unknown
config path or an invalid value is an error before any trial runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_fusion.config import ExperimentConfig, build_dataclass, load_config, load_yaml
from lightning_fusion.errors import ConfigError
from lightning_fusion.registry import suggest

PARAMETER_TYPES = ("categorical", "int", "float")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")


@dataclass
class ParameterSpec:
    """One dimension of the search space."""

    type: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, Any] | None = None  # {earlier parameter: value or [values]}

    def __post_init__(self) -> None:
        if self.type not in PARAMETER_TYPES:
            raise ValueError(suggest(self.type, list(PARAMETER_TYPES), "parameter type"))
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if any(v is not None for v in (self.low, self.high, self.step)) or self.log:
                raise ValueError("a categorical parameter takes choices, not low/high/step/log")
            return
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"bad range: low {self.low} must be <= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if self.type == "int" and any(v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError(f"an int parameter needs integer low/high/step, got {self.low}, {self.high}, {self.step}")

    def grid_values(self) -> list[Any]:
        """Every value, for the grid sampler (categorical, or int/float with a step)."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.step is None and not (self.type == "int" and not self.log):
            raise ValueError("a grid needs categorical parameters or int/float ranges with a step")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else values

    def extremes(self) -> list[Any]:
        """The values that must compose into a valid experiment (every choice, both range ends)."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(suggest(self.name, list(SAMPLERS), "sampler"))


@dataclass
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 3  # median: trials that finish before anything is pruned
    n_warmup_steps: int = 2  # median: epochs before a trial can be pruned
    min_resource: int = 1  # hyperband
    reduction_factor: int = 3  # hyperband

    def __post_init__(self) -> None:
        if self.name not in PRUNERS:
            raise ValueError(suggest(self.name, list(PRUNERS), "pruner"))
        if self.n_startup_trials < 0 or self.n_warmup_steps < 0 or self.min_resource < 1 or self.reduction_factor < 2:
            raise ValueError("n_startup_trials, n_warmup_steps >= 0; min_resource >= 1; reduction_factor >= 2")


@dataclass
class StudySpec:
    """A whole study file; ``base`` is resolved relative to the file."""

    base: str
    space: dict[str, ParameterSpec]
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "val/balanced_accuracy"
    direction: str = "maximize"
    trials: int | None = None  # default: the grid size for grid, else 20
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    name: str | None = None  # default: the file name without .yaml
    description: str = ""
    cv: int | None = None  # K: each trial trains K fold models; its value is their mean best validation value

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(suggest(self.direction, list(DIRECTIONS), "direction"))
        if not self.space:
            raise ValueError("space: name at least one parameter")
        if self.cv is not None and self.cv < 2:
            raise ValueError(f"cv needs at least 2 folds, got {self.cv}")
        if not self.metric.startswith("val/"):
            raise ValueError(
                f"metric must be a validation metric (val/...), got {self.metric!r}: the test set is not for tuning"
            )
        names = list(self.space)
        for position, (path, spec) in enumerate(self.space.items()):
            for condition in spec.when or {}:
                if condition not in self.space:
                    raise ValueError(f"space.{path}.when: {suggest(condition, names, 'parameter')}")
                if names.index(condition) >= position:
                    raise ValueError(f"space.{path}.when: {condition!r} must come before {path!r} in the space")
        if self.sampler.name == "grid":
            if any(spec.when for spec in self.space.values()):
                raise ValueError("the grid sampler cannot take conditional ('when') parameters")
            size = math.prod(len(spec.grid_values()) for spec in self.space.values())
            if self.trials is None:
                self.trials = size
            elif self.trials > size:
                raise ValueError(f"trials {self.trials} exceeds the grid size {size}")
        if self.trials is None:
            self.trials = 20
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")


@dataclass
class Study:
    """A loaded, checked study: the spec, the base experiment path and the study name."""

    spec: StudySpec
    path: Path
    base_path: Path

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    def compose(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> ExperimentConfig:
        """The experiment of one trial: base YAML, then the study's overrides, then the sampled parameters."""
        return load_config(self.base_path, {**self.spec.overrides, **params, **(extra or {})})


def load_study(path: str | Path) -> Study:
    """Read and check a study file (see the module docstring); errors name the file and the key."""
    path = Path(path)
    data = load_yaml(path)
    try:
        spec = build_dataclass(StudySpec, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    base_path = (path.parent / spec.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base experiment not found: {spec.base} (looked for {base_path})")
    study = Study(spec, path, base_path)
    try:
        study.compose({})
    except ConfigError as err:
        raise ConfigError(f"{path}: overrides: {err}") from None
    for param, parameter in spec.space.items():
        # a conditional parameter is checked with its condition holding (the first value it accepts)
        condition = {
            k: v[0] if isinstance(v, list) and not _list_choice(spec, k) else v
            for k, v in (parameter.when or {}).items()
        }
        for value in parameter.extremes():
            try:
                study.compose({**condition, param: value})
            except ConfigError as err:
                raise ConfigError(f"{path}: space.{param} = {value!r}: {err}") from None
    return study


def _list_choice(spec: StudySpec, param: str) -> bool:
    """Whether ``param``'s choices are lists (then a ``when`` value that is a list is one choice, not several)."""
    return any(isinstance(c, list) for c in spec.space[param].choices or [])


def grid_space(spec: StudySpec) -> dict[str, list[Any]]:
    """Optuna's grid: each parameter's values as Optuna-storable scalars (lists become keys)."""
    return {param: [choice_key(v) for v in p.grid_values()] for param, p in spec.space.items()}


def choice_key(value: Any) -> Any:
    """Optuna stores None/bool/int/float/str; a list choice is stored as ``"a+b"``."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return value


def sample(trial: Any, spec: StudySpec) -> dict[str, Any]:
    """The trial's parameter values (config path → value), skipping conditions that do not hold."""
    values: dict[str, Any] = {}
    for param, p in spec.space.items():
        if p.when and not all(_matches(values.get(k), v) for k, v in p.when.items()):
            continue
        if p.type == "categorical":
            keys = [choice_key(c) for c in p.choices or []]
            picked = trial.suggest_categorical(param, keys)
            values[param] = (p.choices or [])[keys.index(picked)]
        elif p.type == "int":
            values[param] = trial.suggest_int(param, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[param] = trial.suggest_float(param, p.low, p.high, step=p.step, log=p.log)
    return values


def _matches(value: Any, expected: Any) -> bool:
    options = expected if isinstance(expected, list) and not isinstance(value, list) else [expected]
    return any(choice_key(value) == choice_key(option) for option in options)


__all__ = ["ParameterSpec", "Study", "StudySpec", "grid_space", "load_study", "sample"]
