"""The experiment schema: one dataclass per config section, :class:`ExperimentConfig` at the root.

Each field's comment (on its line or just above it) is its documentation: ``--help`` shows it
(:mod:`lightning_fusion.config.help`). A section's ``__post_init__`` checks its own values; rules
that involve more than one section or a component's registry metadata are in
:mod:`lightning_fusion.config.rules`. Components chosen by name (reader, encoders, fusion) are
:class:`~lightning_fusion.config.components.Component` fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_fusion.config.components import (
    EncoderComponent,
    FusionComponent,
    ReaderComponent,
    component_field,
    component_map_field,
)
from lightning_fusion.errors import UnknownNameError
from lightning_fusion.registry import suggest


@dataclass
class SplitConfig:
    """Patient-level stratified split fractions (ignored when the dataset has predefined splits)."""

    train: float = 0.8  # fraction of patients for training
    val: float = 0.1  # fraction for validation (early stopping, checkpoint choice)
    test: float = 0.1  # fraction for the test set, evaluated once
    seed: int = 42  # seed of the split
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

    enabled: bool = True  # augment training images
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

    normalise: str = "lead"  # lead | global | sample | none

    def __post_init__(self) -> None:
        choices = ["lead", "global", "sample", "none"]
        if self.normalise not in choices:
            raise UnknownNameError(suggest(self.normalise, choices, "signal normalisation"))


PIPELINES = ("auto", "device", "per_sample")  # DataConfig.pipeline


@dataclass
class DataConfig:
    """Which dataset, where it is, and how it becomes batches."""

    reader: ReaderComponent = component_field("reader", "demo_mpi")  # dataset reader: the data layout
    root: str | None = None  # dataset folder; the demo reader generates its cohort here (or in a cache)
    exclude_labels: list[str] = field(default_factory=list)  # labels whose patients are left out
    # keep patients that lack some of the model's modalities (at least one present); their absent
    # modality is masked by the fusion, so only fusions that support missing modalities accept it
    keep_missing_modalities: bool = False
    image_size: int = 64  # images are resized to image_size x image_size pixels
    batch_size: int = 32  # samples per batch
    # DataLoader worker processes (kept alive between epochs); auto: 0 on the CPU (training uses every
    # core), else the usable cores per training process on the machine, less one, at most 8
    num_workers: int | str = "auto"
    # how images become batches. device: whole uint8 batches gathered at once and moved as they are;
    # converted to float and augmented for the whole batch on the training device. per_sample: each
    # image converted (and augmented, with albumentations) in the loader. auto: device on a GPU or
    # other accelerator, per_sample on the CPU (as fast there; docs/hardware.md)
    pipeline: str = "auto"
    pin_memory: bool | None = None  # page-locked host batches for faster, asynchronous copies; None: on CUDA
    # keep decoded images on disk as memory-mapped .npy files under $LF_CACHE_DIR/memory_map, read a
    # batch at a time, instead of in memory: for datasets larger than memory, and DDP ranks of one
    # machine share one copy (docs/hardware.md#datasets-larger-than-memory). Off: in memory is as fast
    # for data that fits and writes nothing to disk. Tables and signals stay in memory either way
    memory_map: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)  # patient-level split
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training image augmentation
    tabular: TabularConfig = field(default_factory=TabularConfig)  # tabular preprocessing
    signal: SignalConfig = field(default_factory=SignalConfig)  # signal normalisation

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ValueError(f"num_workers must be auto or a whole number >= 0, got {self.num_workers!r}")
        if self.pipeline not in PIPELINES:
            raise UnknownNameError(suggest(self.pipeline, list(PIPELINES), "data pipeline"))


@dataclass
class HeadConfig:
    """Classifier head after the fusion: hidden widths with one dropout rate each."""

    widths: list[int] = field(default_factory=lambda: [64])  # hidden layer widths
    dropouts: list[float] = field(default_factory=lambda: [0.2])  # dropout rate after each hidden layer

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

    modalities: list[str] = field(default_factory=lambda: ["image", "tabular"])  # the inputs the model uses
    encoders: dict[str, EncoderComponent] = component_map_field(  # the encoder of each modality
        # resnet10t: the fastest timm ResNet that learns the demo cohort from scratch in < 1 min on 2 CPU cores
        "encoder",
        {"image": {"name": "timm", "backbone": "resnet10t"}, "tabular": {"name": "mlp"}},
    )
    fusion: FusionComponent = component_field("fusion", "concat")  # how the encoded modalities are combined
    head: HeadConfig = field(default_factory=HeadConfig)  # classifier head after the fusion
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


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and loss weighting."""

    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-3  # learning rate
    weight_decay: float = 1e-4  # decoupled (AdamW) or L2 (Adam) weight decay
    plateau_factor: float = 0.5  # ReduceLROnPlateau on val/loss
    plateau_patience: int = 2  # epochs without val/loss improvement before the rate drops
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

    max_epochs: int = 15  # upper bound on training epochs
    accelerator: str = "auto"  # cpu | gpu | auto ...
    devices: Any = "auto"  # a count, a list of device ids, or auto
    strategy: str = "auto"  # auto | ddp | ... (ddp_spawn is not supported)
    num_nodes: int = 1  # machines for multi-node DDP
    precision: str | None = None  # None: bf16-mixed on a GPU that supports it, 32-true otherwise
    deterministic: bool = False  # deterministic algorithms (slower, reproducible)
    early_stopping_patience: int = 5  # epochs without val/loss improvement
    gradient_clip_val: float | None = None  # clip gradients to this norm; None: no clipping
    fast_dev_run: bool = False  # one batch of each split, for a quick check
    limit_train_batches: float | None = None  # a fraction (or count) of training batches per epoch
    log_every_n_steps: int = 1  # metrics are logged per epoch; this only sets Lightning's step cadence
    # image encoders and batches in channels-last memory layout (faster convolutions on tensor cores);
    # None: on for CUDA
    channels_last: bool | None = None
    # torch.backends.cudnn.benchmark: time the convolution algorithms on the first batches of each
    # shape, keep the fastest; None: on unless deterministic
    cudnn_benchmark: bool | None = None
    compile: bool = False  # torch.compile the model (slow first steps, then faster; state_dict keys unchanged)

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.deterministic and self.cudnn_benchmark:
            raise ValueError("cudnn_benchmark true picks algorithms by timing, which deterministic true forbids")
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
    confidence: float = 0.95  # level of the confidence intervals
    bootstrap_seed: int = 0  # seed of the bootstrap resampling
    calibration_bins: int = 15  # bins of the reliability diagram and ECE
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
    experiment: str = "lightning_fusion"  # MLflow experiment name
    run_name: str | None = None  # None: <name>-<model kind>
    log_checkpoint: bool = True  # log the best checkpoint as an artifact
    log_model: bool = True  # the best model as an MLflow pyfunc model (``model``): mlflow models serve


@dataclass
class ExperimentConfig:
    """One reproducible experiment: data, model, optimisation, trainer and tracking."""

    name: str = "demo"  # the experiment's name (run names and tags)
    seed: int = 42  # global seed (torch, numpy, python)
    data: DataConfig = field(default_factory=DataConfig)  # the dataset and its batches
    model: ModelConfig = field(default_factory=ModelConfig)  # modalities, encoders, fusion, head
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and schedule
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the Lightning Trainer
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)  # test-set reporting
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow
