"""Audio → log-mel spectrogram image, cached on disk, so recordings can feed an image encoder.

A recording (any file soundfile reads: ``.wav``, ``.flac``, ``.ogg``) is read, mixed to mono,
resampled to :attr:`MelSpectrogramParams.sample_rate` and turned into a power mel spectrogram with
``librosa.feature.melspectrogram`` (``n_fft``, ``hop_length``, ``n_mels``), then into decibels with
``librosa.power_to_db(ref=np.max, top_db=top_db)``: the loudest bin is 0 dB and everything is clipped
at ``-top_db``. The image maps ``[-top_db, 0]`` dB linearly to ``[0, 255]`` (``uint8``), one row per
mel band with the lowest frequency in the bottom row, one column per frame (``1 + samples //
hop_length`` columns, so the width follows the recording's length; the image encoder resizes).

:func:`log_mel_image` is the pure conversion; :func:`cached_log_mel_png` writes its result as a PNG
under ``$LF_CACHE_DIR/log_mel`` (default ``~/.cache/lightning_fusion/log_mel``), keyed by the source
file's resolved path, modification time and size and by the parameters, so an edited recording or
other parameters give a new image and an unchanged one is converted once. PNGs are written to a
temporary file and renamed into place, so concurrent readers never see a partial image.

Bad input is a :class:`~lightning_fusion.data.cohort.DataError` naming the file: unreadable,
empty, shorter than one FFT window, non-finite, or silent audio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile
from PIL import Image

from lightning_fusion.data.cache import cache_root, source_key, write_file_atomically
from lightning_fusion.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_CACHE_VERSION = 1  # bump when the conversion changes, so old cached images are not reused


@dataclass(frozen=True)
class MelSpectrogramParams:
    """How a recording becomes a log-mel image (the librosa parameters of the same names)."""

    sample_rate: int = 16000  # Hz; recordings are resampled to this rate first
    n_mels: int = 64  # mel bands = image rows
    n_fft: int = 1024  # FFT window in samples
    hop_length: int = 256  # samples between frames (16 ms at 16 kHz)
    top_db: float = 80.0  # dynamic range kept below the loudest bin

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if not self.top_db > 0:
            raise ValueError(f"top_db must be > 0, got {self.top_db}")


def default_cache_dir() -> Path:
    """``$LF_CACHE_DIR/log_mel``, else ``~/.cache/lightning_fusion/log_mel``."""
    return cache_root() / "log_mel"


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono ``float32`` samples of ``path`` at ``sample_rate`` Hz.

    Raises:
        DataError: the file cannot be read, is empty or holds non-finite samples (names the file).
    """
    try:
        samples, native_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise DataError(f"unreadable audio file {path}: {err}") from None
    if samples.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples")
    if not np.isfinite(samples).all():
        raise DataError(f"audio file {path} holds non-finite samples")
    mono = samples.mean(axis=1)
    if native_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=native_rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def log_mel_image(samples: np.ndarray, params: MelSpectrogramParams, source: str = "audio") -> np.ndarray:
    """``(n_mels, frames)`` ``uint8`` log-mel image of mono ``samples`` at ``params.sample_rate``.

    Raises:
        DataError: fewer samples than one FFT window, or silence (``source`` names the recording).
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise DataError(f"{source}: expected mono samples (1-D), got shape {samples.shape}")
    if len(samples) < params.n_fft:
        raise DataError(
            f"{source}: {len(samples)} samples at {params.sample_rate} Hz is shorter than one FFT window "
            f"(n_fft={params.n_fft})"
        )
    if not np.any(samples):
        raise DataError(f"{source}: the recording is silent (all samples are zero)")
    power = librosa.feature.melspectrogram(
        y=samples, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length, n_mels=params.n_mels
    )
    decibels = librosa.power_to_db(power, ref=np.max, top_db=params.top_db)
    scaled = (decibels + params.top_db) / params.top_db * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)[::-1].copy()  # low frequencies at the bottom


def cache_key(path: Path, params: MelSpectrogramParams) -> str:
    """Hex digest of the source file's resolved path, mtime and size, and the parameters."""
    return source_key([path], dataclasses.asdict(params), _CACHE_VERSION)


def cached_log_mel_png(path: str | Path, params: MelSpectrogramParams, cache_dir: Path | None = None) -> Path:
    """The log-mel PNG of the recording at ``path``, converted once and then read from the cache.

    Raises:
        DataError: the recording is missing or bad (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{cache_key(path, params)[:32]}.png"
    if target.is_file():
        return target
    image = log_mel_image(load_audio(path, params.sample_rate), params, source=f"audio file {path}")
    return write_file_atomically(target, lambda stream: Image.fromarray(image).save(stream, format="PNG"))
