"""The experiment schema: one dataclass per config section, :class:`ExperimentConfig` at the root.

Each field's comment (on its line or just above it) is its documentation: ``--help`` shows it
(:mod:`lightning_fusion.config.help`). A section's ``__post_init__`` checks its own values; rules
that involve more than one section or a component's registry metadata are in
:mod:`lightning_fusion.config.rules`. Components chosen by name (reader, encoders, fusion) are
:class:`~lightning_fusion.config.components.Component` fields.
"""

from __future__ import annotations

import math
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


IMAGE_POLICIES = ("safe", "radiograph")  # AugmentConfig.policy
SIGNAL_POLICIES = ("none", "safe", "strong")  # SignalConfig.augment


@dataclass
class AugmentConfig:
    """Train-only image augmentation; medically safe defaults (no flips: left/right anatomy matters).

    ``safe``: rotation, shift and brightness below. ``radiograph`` (opt in, for 1- or 3-channel
    radiographs): also a random resized crop (a square crop of ``crop_scale`` of the area, resized
    back), contrast around the image mean and gamma, each with probability ``p``, as the radiograph
    policies of CheXpert/MedMNIST-era training; still no flips.
    """

    enabled: bool = True  # augment training images
    policy: str = "safe"  # safe | radiograph
    rotate_limit: float = 15.0  # degrees, ±
    shift_limit: float = 0.03  # fraction of the image size, ±
    brightness: tuple[float, float] = (0.8, 1.2)  # multiplicative range
    p: float = 0.5  # probability of each transform
    crop_scale: tuple[float, float] = (0.7, 1.0)  # radiograph: fraction of the area the random crop keeps
    contrast: tuple[float, float] = (0.8, 1.2)  # radiograph: contrast factor around the image mean
    gamma: tuple[float, float] = (0.8, 1.25)  # radiograph: gamma exponent on [0, 1] intensities

    def __post_init__(self) -> None:
        if self.policy not in IMAGE_POLICIES:
            raise UnknownNameError(suggest(self.policy, list(IMAGE_POLICIES), "image augmentation policy"))
        if not 0 <= self.rotate_limit <= 180:
            raise ValueError(f"rotate_limit must be in [0, 180] degrees, got {self.rotate_limit}")
        if not 0 <= self.shift_limit < 0.5:
            raise ValueError(f"shift_limit must be in [0, 0.5), got {self.shift_limit}")
        for name in ("brightness", "contrast", "gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {getattr(self, name)}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 <= self.p <= 1:
            raise ValueError(f"p must be a probability, got {self.p}")


@dataclass
class TabularConfig:
    """Tabular preprocessing, fitted on training patients only."""

    impute: str = "median"  # median | mean | most_frequent
    scale: bool = True  # z-score with training mean/std
    missing_indicators: bool = False  # add a 0/1 column per feature that had missing training values
    select_k: int | None = None  # ANOVA F-test top-k (SelectKBest(f_classif)); None keeps all
    # train-only Gaussian noise on the preprocessed (z-scored) features, this standard deviation; 0: none
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.noise < 10:
            raise ValueError(f"noise must be a standard deviation in [0, 10), got {self.noise}")
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

    ``augment`` (training only, :mod:`lightning_fusion.data.signal_augment`): ``safe`` shifts the
    recording in time by up to 10 %, scales its amplitude by 0.9-1.1, adds Gaussian noise and baseline
    wander, each with probability 0.5; ``strong`` does more of each, always; ``none`` nothing.
    """

    normalise: str = "lead"  # lead | global | sample | none
    augment: str = "none"  # training augmentation policy: none | safe | strong

    def __post_init__(self) -> None:
        if self.augment not in SIGNAL_POLICIES:
            raise UnknownNameError(suggest(self.augment, list(SIGNAL_POLICIES), "signal augmentation policy"))
        choices = ["lead", "global", "sample", "none"]
        if self.normalise not in choices:
            raise UnknownNameError(suggest(self.normalise, choices, "signal normalisation"))


PIPELINES = ("auto", "device", "per_sample")  # DataConfig.pipeline
SAMPLERS = ("shuffle", "balanced")  # DataConfig.sampler


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
    # how training batches are drawn: shuffle (each patient once per epoch) | balanced (torch
    # WeightedRandomSampler: patients drawn with replacement, each class equally often; use with
    # optim.class_weights false). Under DDP, Lightning splits one seeded draw between the processes
    sampler: str = "shuffle"
    pin_memory: bool | None = None  # page-locked host batches for faster, asynchronous copies; None: on CUDA
    # keep decoded images on disk as memory-mapped .npy files under $LF_CACHE_DIR/memory_map, read a
    # batch at a time, instead of in memory: for datasets larger than memory, and DDP ranks of one
    # machine share one copy (docs/hardware.md#datasets-larger-than-memory). Off: in memory is as fast
    # for data that fits and writes nothing to disk. Tables and signals stay in memory either way
    memory_map: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)  # patient-level split
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training image augmentation
    tabular: TabularConfig = field(default_factory=TabularConfig)  # tabular preprocessing (and feature noise)
    signal: SignalConfig = field(default_factory=SignalConfig)  # signal normalisation and augmentation

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ValueError(f"num_workers must be auto or a whole number >= 0, got {self.num_workers!r}")
        if self.pipeline not in PIPELINES:
            raise UnknownNameError(suggest(self.pipeline, list(PIPELINES), "data pipeline"))
        if self.sampler not in SAMPLERS:
            raise UnknownNameError(suggest(self.sampler, list(SAMPLERS), "training sampler"))


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
    # Auxiliary unimodal losses (as AutoGluon's fusion MLP): a linear head per modality on its encoded
    # features, their cross-entropies summed and added to the loss with this weight (0: off); training only
    aux_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.aux_loss_weight) and self.aux_loss_weight >= 0):
            raise ValueError(f"aux_loss_weight must be >= 0 (0 turns it off), got {self.aux_loss_weight}")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if not self.modalities:
            raise ValueError("modalities must name at least one modality")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities has duplicates: {self.modalities}")


THRESHOLDS = ("youden", "sensitivity", "fixed")  # EvaluationConfig.threshold
MONITORED = {"val/loss": "min", "val/auroc": "max", "val/balanced_accuracy": "max"}  # metric → mode
WEIGHT_AVERAGING = ("none", "ema", "swa")  # OptimConfig.weight_averaging


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule, loss and weight averaging (docs/recipes.md gives each default's reason)."""

    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-3  # learning rate (the peak rate of cosine and onecycle)
    weight_decay: float = 1e-4  # decoupled (AdamW) or L2 (Adam) weight decay
    # learning-rate schedule: plateau (ReduceLROnPlateau on val/loss; needs no run length, so it suits
    # early stopping) | cosine (linear warm-up, then cosine to 0) | onecycle (torch OneCycleLR, per batch)
    # | step (rate x step_gamma at fractions of max_epochs)
    schedule: str = "plateau"
    plateau_factor: float = 0.5  # plateau: the rate is multiplied by this when val/loss stalls
    plateau_patience: int = 2  # plateau: epochs without val/loss improvement before the rate drops
    warmup_epochs: int = 1  # cosine: epochs of linear learning-rate warm-up (not the backbone warm-up)
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of max_epochs
    step_gamma: float = 0.1  # step: the rate is multiplied by this at each milestone
    # inverse-frequency weights from the training split in the loss (the run says when its split is imbalanced)
    class_weights: bool = True
    loss: str = "cross_entropy"  # cross_entropy | focal (Lin et al., 2017)
    focal_gamma: float = 2.0  # focal: focusing exponent; 0 is cross-entropy
    label_smoothing: float = 0.0  # share of each target spread over all classes (0: none)
    # none | ema (exponential moving average of the weights, every step) | swa (equal average of the weights
    # of every epoch from swa_start on); Lightning's WeightAveraging: the averaged weights are validated,
    # checkpointed and tested
    weight_averaging: str = "none"
    ema_decay: float = 0.999  # ema: weight of the running average per step
    swa_start: float = 0.75  # swa: fraction of max_epochs after which weights are averaged

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise UnknownNameError(suggest(self.optimizer, ["adam", "adamw"], "optimizer"))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not self.step_milestones or any(not 0 < f < 1 for f in self.step_milestones):
            raise ValueError(f"step_milestones must be fractions of max_epochs in (0, 1), got {self.step_milestones}")
        if not 0 < self.step_gamma < 1:
            raise ValueError(f"step_gamma must be in (0, 1), got {self.step_gamma}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_averaging not in WEIGHT_AVERAGING:
            raise UnknownNameError(suggest(self.weight_averaging, list(WEIGHT_AVERAGING), "weight averaging"))
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not 0 <= self.swa_start < 1:
            raise ValueError(f"swa_start must be a fraction of max_epochs in [0, 1), got {self.swa_start}")


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
    # the validation metric that picks the checkpoint and stops early (lower is better for val/loss, higher
    # for the others): val/loss | val/auroc | val/balanced_accuracy. val/loss: a proper scoring rule over
    # every prediction, smooth on small validation sets where AUROC saturates and accuracy moves in steps
    monitor: str = "val/loss"
    early_stopping_patience: int = 5  # epochs without improvement of the monitored metric
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
        if self.monitor not in MONITORED:
            raise UnknownNameError(suggest(self.monitor, list(MONITORED), "monitored metric"))
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
    # binary models' decision threshold on the second class's probability, used by the test report, predict,
    # serving and the web page: fixed (fixed_threshold) | youden (max sensitivity + specificity on validation)
    # | sensitivity (the most specific point reaching target_sensitivity on validation)
    threshold: str = "fixed"
    target_sensitivity: float = 0.9  # sensitivity: the validation sensitivity the threshold must reach
    fixed_threshold: float = 0.5  # fixed: the threshold (0.5: the more probable class)
    # test-time augmentation: the class probabilities of the test step, predict, serving and the web page
    # are the mean over the input and N copies augmented by each modality's training augmentation
    # (data.augment, data.signal.augment, data.tabular.noise); 0: none. Validation (the checkpoint's choice)
    # stays un-augmented.
    tta: int = 0

    def __post_init__(self) -> None:
        if self.tta < 0:
            raise ValueError(f"tta must be >= 0 (augmented copies per input), got {self.tta}")
        if self.bootstrap_resamples < 1000:
            raise ValueError(f"bootstrap_resamples must be >= 1000, got {self.bootstrap_resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.calibration_bins < 2:
            raise ValueError(f"calibration_bins must be >= 2, got {self.calibration_bins}")
        if self.explain_patients < 0:
            raise ValueError(f"explain_patients must be >= 0, got {self.explain_patients}")
        if self.threshold not in THRESHOLDS:
            raise UnknownNameError(suggest(self.threshold, list(THRESHOLDS), "decision threshold"))
        if not 0 < self.target_sensitivity <= 1:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        if not 0 < self.fixed_threshold < 1:
            raise ValueError(f"fixed_threshold must be in (0, 1), got {self.fixed_threshold}")


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
