"""The project's error classes: what a command reports on one line (and exits 2), and nothing else.

A leaf module: the command-line code imports these without importing encoders, data or models.
Each message names the thing that is wrong (key, file, patient, column, label, model reference)
and, where there are choices, the ones that would be right.
"""


class ConfigError(ValueError):
    """An experiment configuration that cannot be used; the message names the dotted key."""


class UnknownNameError(KeyError):
    """A name that is not in a registry (or not a valid config key); the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead
        return str(self.args[0])


class DataError(ValueError):
    """Bad input data; the message names the file, patient, column or label that is wrong."""


class LeakageError(DataError):
    """The same patient appears in more than one split (or fold)."""


class UploadError(DataError):
    """An upload the model cannot use; the message says which file or modality and why (HTTP 400)."""


class ModelLoadError(ValueError):
    """A model reference that cannot be used; the message names it and says why."""


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, not cached, or a bad file)."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be used when a run starts (server unreachable, SQLite store locked); no run exists."""


__all__ = [
    "ConfigError",
    "DataError",
    "LeakageError",
    "ModelLoadError",
    "PretrainedWeightsError",
    "TrackingError",
    "UnknownNameError",
    "UploadError",
]
