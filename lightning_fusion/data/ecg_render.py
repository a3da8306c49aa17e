"""Render a 12-lead ECG signal as a grayscale image (the paper printout), cached on disk as PNG.

Layouts:

* ``3x4`` (default) — the standard clinical printout without a rhythm strip: 3 rows × 4 columns, each
  column showing the next quarter of the recording (2.5 s of a 10 s ECG)::

      I    | aVR | V1 | V4        lead i is drawn in row i % 3, column i // 3,
      II   | aVL | V2 | V5        so the leads must be in the standard order
      III  | aVF | V3 | V6        I, II, III, aVR, aVL, aVF, V1, ..., V6 (PTB-XL's order)

* ``12x1`` — one row per lead, each showing the whole recording.

Every cell has a light grid (a line every 0.2 s and every 0.5 mV, like the paper's large squares) and
a fixed amplitude scale (``mv_span`` millivolts per row height, the same for every record, so
amplitude differences such as ST deviation stay visible); a trace beyond the cell is clipped at its
edge, as a paper printout does. Drawing uses PIL ``ImageDraw`` (a few ms per record), not matplotlib.

Rendered images are cached under ``$LF_CACHE_DIR/ecg_images`` (default
``~/.cache/lightning_fusion/ecg_images``), keyed by the record files' resolved paths, modification
times and sizes and by the render options, so an edited record or new options render anew. Files are
written atomically (temporary file + rename), so concurrent workers never read a partial PNG.
:class:`RenderedECGModality` renders lazily: only the records a data module actually loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lightning_fusion.data.cache import cache_root, source_key, write_file_atomically
from lightning_fusion.data.modalities import ImageStackModality
from lightning_fusion.errors import DataError

LAYOUTS = ("3x4", "12x1")
RENDER_VERSION = 1  # bump when the drawing changes, so cached images are not reused
_BACKGROUND, _GRID, _TRACE = 255, 205, 0


@dataclass(frozen=True)
class RenderOptions:
    """How an ECG is drawn: image size in pixels, layout, amplitude scale and line width."""

    width: int = 512
    height: int = 384
    layout: str = "3x4"
    mv_span: float = 3.0  # millivolts per row height (±1.5 mV around the row's centre line)
    line_width: int = 1
    lead_labels: bool = True

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"ECG image layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.width < 32 or self.height < 32:
            raise ValueError(f"ECG image size must be at least 32×32 pixels, got {self.width}×{self.height}")
        if self.mv_span <= 0:
            raise ValueError(f"mv_span must be > 0 millivolts, got {self.mv_span}")
        if self.line_width < 1:
            raise ValueError(f"line_width must be >= 1 pixel, got {self.line_width}")


def render_ecg(
    signal: np.ndarray, leads: Sequence[str], sampling_rate: float, options: RenderOptions | None = None
) -> Image.Image:
    """Draw a ``(leads, samples)`` signal in millivolts as an ``L`` (8-bit grayscale) image."""
    options = options or RenderOptions()
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(leads):
        raise ValueError(f"expected a (leads, samples) signal with {len(leads)} leads, got shape {signal.shape}")
    if options.layout == "3x4" and signal.shape[0] != 12:
        raise ValueError(f"the 3x4 layout needs 12 leads in the standard order, got {signal.shape[0]}")
    rows, columns = (3, 4) if options.layout == "3x4" else (signal.shape[0], 1)
    if signal.shape[1] < 2 * columns:
        raise ValueError(f"a signal of {signal.shape[1]} samples is too short to draw in {columns} column(s)")
    image = Image.new("L", (options.width, options.height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = options.width / columns, options.height / rows
    bounds = np.linspace(0, signal.shape[1], columns + 1).round().astype(int)
    for lead in range(signal.shape[0]):
        row, column = (lead % 3, lead // 3) if options.layout == "3x4" else (lead, 0)
        x0, y0 = column * cell_w, row * cell_h
        segment = signal[lead, bounds[column] : bounds[column + 1]]
        _draw_grid(draw, x0, y0, cell_w, cell_h, len(segment) / sampling_rate, options.mv_span)
        xs = x0 + np.arange(len(segment)) * (cell_w - 1) / (len(segment) - 1)
        ys = y0 + cell_h / 2 - segment * (cell_h / options.mv_span)
        ys = np.clip(ys, y0, y0 + cell_h - 1)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=_TRACE, width=options.line_width)
        if options.lead_labels:
            draw.text((x0 + 2, y0 + 1), leads[lead], fill=_TRACE)
    return image


def _draw_grid(
    draw: ImageDraw.ImageDraw, x0: float, y0: float, width: float, height: float, seconds: float, mv_span: float
) -> None:
    for t in np.arange(0.0, seconds, 0.2):
        x = x0 + t / seconds * width
        draw.line([(x, y0), (x, y0 + height - 1)], fill=_GRID)
    centre, per_mv = y0 + height / 2, height / mv_span
    for mv in np.arange(0.0, mv_span / 2, 0.5):
        for y in {centre - mv * per_mv, centre + mv * per_mv}:
            draw.line([(x0, y), (x0 + width - 1, y)], fill=_GRID)


def default_cache_dir() -> Path:
    """``$LF_CACHE_DIR/ecg_images``, or ``~/.cache/lightning_fusion/ecg_images``."""
    return cache_root() / "ecg_images"


class ECGImageCache:
    """Rendered ECG images on disk, one PNG per (record files, render options)."""

    def __init__(self, options: RenderOptions, cache_dir: Path | None = None) -> None:
        self.options = options
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def path_for(self, record_files: Sequence[Path]) -> Path:
        """The cache file of a record; changes when a record file or a render option changes."""
        key = source_key(record_files, dataclasses.asdict(self.options), RENDER_VERSION)
        return self.cache_dir / key[:2] / f"{key}.png"

    def image(
        self, record_files: Sequence[Path], load: Callable[[], np.ndarray], leads: Sequence[str], sampling_rate: float
    ) -> Path:
        """The cached PNG of a record, rendering (and writing atomically) only if it is not there yet."""
        path = self.path_for(record_files)
        if path.is_file():
            return path
        image = render_ecg(load(), leads, sampling_rate, self.options)
        return write_file_atomically(path, lambda stream: image.save(stream, format="PNG"))


class RenderedECGModality(ImageStackModality):
    """ECG images rendered from each sample's signal on first load (one grayscale view per sample).

    Args:
        record_files: sample id → the files of its record (e.g. the WFDB ``.hea`` and ``.dat``); their
            paths, times and sizes key the cache.
        load_signal: sample id → its ``(leads, samples)`` signal in millivolts.
        leads: lead names in row order (printed on the image).
        sampling_rate: samples per second (for the 0.2 s grid and the time per column).
        cache: where the PNGs go and how they are drawn.

    ``files`` (sample id → ``[png]``) fills in as samples are loaded; ``patient_ids`` is known up front.
    """

    def __init__(
        self,
        record_files: Mapping[str, Sequence[Path]],
        load_signal: Callable[[str], np.ndarray],
        leads: Sequence[str],
        sampling_rate: float,
        cache: ECGImageCache,
    ) -> None:
        super().__init__({}, channels_per_view=1)
        self.record_files = {sid: [Path(p) for p in paths] for sid, paths in record_files.items()}
        self.load_signal = load_signal
        self.leads = list(leads)
        self.sampling_rate = sampling_rate
        self.cache = cache

    @property
    def patient_ids(self) -> set[str]:
        return set(self.record_files)

    def load(self, patient_id: str, image_size: int) -> np.ndarray:
        """Render the sample's ECG (unless cached), then load it like any image view."""
        if patient_id not in self.files:
            try:
                png = self.cache.image(
                    self.record_files[patient_id],
                    lambda: self.load_signal(patient_id),
                    self.leads,
                    self.sampling_rate,
                )
            except FileNotFoundError as err:
                raise DataError(f"sample {patient_id}: record file not found: {err.filename}") from None
            except ValueError as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"sample {patient_id}: cannot render its ECG: {err}") from None
            self.files[patient_id] = [png]
        return super().load(patient_id, image_size)
