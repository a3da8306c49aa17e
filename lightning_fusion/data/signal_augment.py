"""Train-only augmentation of 1-D signals (e.g. ECG leads), on whole batches.

Signals ``(B, leads, samples)``, after the fitted per-lead normalisation (0 is a lead's training
mean). Each recording draws its own parameters; each transform applies to a recording with
probability ``p``:

* **time shift** (random crop + shift): the recording moves by up to ±``shift`` of its length and
  the uncovered end is 0. A window of the recording is seen at another offset, as the random crops
  of the PTB-XL benchmark (Strodthoff et al. 2021), with the model's fixed input length kept; no
  resampling, so heart rate and interval durations are unchanged.
* **amplitude scaling**: one factor in ``scale`` for all leads of a recording. Small by default:
  voltage criteria (e.g. for ventricular hypertrophy) read absolute amplitudes.
* **Gaussian noise** of standard deviation ``noise`` (in normalised units): electrode and muscle noise.
* **baseline wander**: per lead, a sinusoid of amplitude up to ``wander`` and at most
  ``wander_cycles`` cycles per recording with a random phase (PTB-XL: 10 s, so 2 cycles = 0.2 Hz,
  the respiration band where baseline wander lives).

The policies (``data.signal.augment``): ``none``; ``safe`` (the values
above at their defaults: changes a cardiologist would read the same); ``strong`` (each stronger and
always on; opt in, check it on validation). Iwana & Uchida, "An empirical survey of data
augmentation for time series classification with neural networks", PLOS ONE 2021, survey these
transforms; Nonaka & Seita (2020) and Rahman et al. (2023) measure them on ECGs.
"""

from __future__ import annotations

import math

import torch

# policy → the transforms' strengths (shift, scale range, noise, wander amplitude, wander cycles, p)
POLICIES = {
    "safe": {"shift": 0.1, "scale": (0.9, 1.1), "noise": 0.02, "wander": 0.05, "wander_cycles": 2.0, "p": 0.5},
    "strong": {"shift": 0.25, "scale": (0.7, 1.3), "noise": 0.05, "wander": 0.2, "wander_cycles": 3.0, "p": 1.0},
}


class SignalAugment:
    """The train-only signal augmentation of a policy, for ``(B, leads, samples)`` float batches on any device.

    Draws from torch's global random generator of the batch's device (seeded by ``lightning.seed_everything``).
    """

    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"signal augmentation policy {policy!r} has no transforms; choose {sorted(POLICIES)}")
        self.policy = policy
        self.strength = POLICIES[policy]

    def __call__(self, signals: torch.Tensor) -> torch.Tensor:
        count, _, length = signals.shape
        if count == 0:
            return signals
        strength, device = self.strength, signals.device
        signals = signals.float()

        def chosen() -> torch.Tensor:  # (B, 1, 1): which recordings a transform applies to
            return (torch.rand(count, device=device) < strength["p"]).view(-1, 1, 1)

        shifts = torch.round(_uniform(count, -strength["shift"], strength["shift"], device) * length).long()
        shifted = time_shift(signals, torch.where(chosen().view(-1), shifts, torch.zeros_like(shifts)))
        low, high = strength["scale"]
        factors = torch.where(chosen(), _uniform((count, 1, 1), low, high, device), torch.ones(1, device=device))
        noise = torch.randn_like(signals) * strength["noise"] * chosen()
        wander = baseline_wander(signals.shape, strength["wander"], strength["wander_cycles"], device) * chosen()
        return shifted * factors + noise + wander


def time_shift(signals: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each recording of ``(B, leads, T)`` moved by ``shifts[b]`` samples (positive: later), zero-filled."""
    length = signals.shape[-1]
    source = torch.arange(length, device=signals.device).view(1, 1, -1) - shifts.view(-1, 1, 1)
    inside = (source >= 0) & (source < length)
    gathered = signals.gather(2, source.clamp(0, length - 1).expand_as(signals))
    return torch.where(inside, gathered, torch.zeros((), device=signals.device))


def baseline_wander(shape: torch.Size, amplitude: float, cycles: float, device: torch.device) -> torch.Tensor:
    """``(B, leads, T)`` sinusoids: per lead an amplitude in [0, ``amplitude``], a frequency in (0, ``cycles``]
    cycles per recording and a random phase."""
    count, leads, length = shape
    time = torch.linspace(0.0, 1.0, length, device=device).view(1, 1, -1)
    amplitudes = _uniform((count, leads, 1), 0.0, amplitude, device)
    frequencies = _uniform((count, leads, 1), 0.0, cycles, device)
    phases = _uniform((count, leads, 1), 0.0, 2 * math.pi, device)
    return amplitudes * torch.sin(2 * math.pi * frequencies * time + phases)


def _uniform(shape: int | tuple[int, ...], low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, device=device).uniform_(low, high)
