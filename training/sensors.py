"""Seeded synthetic sensor windows from an electric motor driving a conveyor, for ``fusion``.

One sample is a 0.25 s window, 256 samples at 1024 Hz, of six channels (``CHANNELS``):

- ``vib_x``, ``vib_y`` (radial) and ``vib_z`` (axial): acceleration in g from an
  AC-coupled accelerometer on the motor's drive-end bearing housing;
- ``temperature_c`` (casing), ``current_a`` (phase current RMS) and ``sound_db`` (acoustic
  level, dB SPL): slow channels, sampled at the same rate, nearly constant over a window
  apart from a slow drift and their sensor noise.

Physics, per sample: the shaft turns at 1420-1500 rpm (about 24 Hz, "1x") with a random
phase. Load (0..1) sets the current (4-12 A), the casing temperature (ambient 15-35 °C plus
18-30 K of load-dependent rise, so about 35-65 °C) and part of the sound level. Every
window carries a residual 1x and a little 2x, broadband noise, sometimes an ambient tone from
a neighbouring machine, and a per-axis sensor gain within ±10%. The states (``STATES``):

- ``normal``: only the above;
- ``imbalance``: a strong 1x rotating force, so x and y are 90° apart; little axial;
- ``misalignment``: a strong 2x plus some 1x, with an axial (z) component as large as or
  larger than the radial ones;
- ``bearing_wear``: impulses at the outer-race defect frequency (3.5-3.6 x shaft speed),
  each ringing a structural resonance (250-400 Hz) that decays in a few ms: high
  kurtosis and crest factor, and the motor sounds louder;
- ``overheating``: casing at 70-100 °C and a slightly higher current; vibration as normal.

Each fault has a severity from mild (close to normal) to severe, so the classes overlap a
little at the mild end: a model should reach about 93-98%, not 100%.

``defect_rate`` is the line's recent defect fraction from the camera model: Beta-distributed
around 0.01-0.03, raised a little by imbalance and misalignment (a shaking conveyor bumps
parts). It is a weak hint, not a decisive one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHANNELS: tuple[str, ...] = ("vib_x", "vib_y", "vib_z", "temperature_c", "current_a", "sound_db")
STATES: tuple[str, ...] = ("normal", "imbalance", "misalignment", "bearing_wear", "overheating")
SAMPLE_RATE_HZ = 1024
WINDOW = 256

NORMAL, IMBALANCE, MISALIGNMENT, BEARING_WEAR, OVERHEATING = range(len(STATES))
_T = np.arange(WINDOW, dtype=np.float64) / SAMPLE_RATE_HZ  # seconds, [WINDOW]
_MAX_IMPULSES = 32  # at most 3.6 x 25 Hz x 0.25 s = 23 impulses in a window, plus one before


@dataclass(frozen=True)
class SensorBatch:
    window: np.ndarray  # float32 [n, WINDOW, len(CHANNELS)]
    defect_rate: np.ndarray  # float32 [n, 1]
    label: np.ndarray  # int64 [n], index into STATES


def generate(n: int, seed: int) -> SensorBatch:
    """``n`` labelled windows, balanced over ``STATES``; the same ``seed`` gives the same bytes."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(n) % len(STATES)).astype(np.int64)
    severity = rng.uniform(0.0, 1.0, n)
    load = rng.uniform(0.0, 1.0, n)
    shaft_hz = rng.uniform(1420.0, 1500.0, n) / 60.0
    phase = rng.uniform(0.0, 2 * np.pi, n)

    vib = _vibration(rng, label, severity, shaft_hz, phase)
    gain = rng.uniform(0.9, 1.1, (n, 1, 3))  # uncalibrated accelerometer axes
    bias = rng.normal(0.0, 0.02, (n, 1, 3))  # DC offset the AC coupling lets through
    vib = vib * gain + bias

    temperature, current, sound = _slow_levels(rng, label, severity, load)
    slow = np.stack([temperature, current, sound], axis=1)[:, None, :]  # [n, 1, 3]
    drift = rng.normal(0.0, 1.0, (n, 1, 3)) * np.array([0.05, 0.03, 0.3]) * _T[None, :, None] / 0.25
    noise = rng.normal(0.0, 1.0, (n, WINDOW, 3)) * np.array([0.15, 0.05, 0.5])
    window = np.concatenate([vib, slow + drift + noise], axis=2)

    return SensorBatch(
        window=window.astype(np.float32),
        defect_rate=_defect_rate(rng, label, severity).astype(np.float32)[:, None],
        label=label,
    )


def _tone(hz: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """``sin(2 pi f t + phase)`` for per-sample ``f`` and ``phase``: [n, WINDOW]."""
    return np.sin(2 * np.pi * hz[:, None] * _T[None, :] + phase[:, None])


def _vibration(
    rng: np.random.Generator,
    label: np.ndarray,
    severity: np.ndarray,
    shaft_hz: np.ndarray,
    phase: np.ndarray,
) -> np.ndarray:
    n = int(label.shape[0])
    vib = np.zeros((n, WINDOW, 3))

    # Every motor: residual imbalance (1x), a trace of 2x, broadband noise.
    a1 = rng.uniform(0.01, 0.05, n)
    a2 = rng.uniform(0.003, 0.015, n)
    p2 = rng.uniform(0.0, 2 * np.pi, n)
    vib[:, :, 0] += a1[:, None] * _tone(shaft_hz, phase) + a2[:, None] * _tone(2 * shaft_hz, p2)
    vib[:, :, 1] += a1[:, None] * _tone(shaft_hz, phase - np.pi / 2)
    vib[:, :, 1] += a2[:, None] * _tone(2 * shaft_hz, p2 - np.pi / 2)
    vib[:, :, 2] += 0.3 * a1[:, None] * _tone(shaft_hz, phase + rng.uniform(0, 2 * np.pi, n))
    vib += rng.uniform(0.005, 0.02, (n, 1, 1)) * rng.normal(0.0, 1.0, (n, WINDOW, 3))

    # A neighbouring machine, heard through the floor by a third of the motors.
    other = rng.uniform(0.0, 1.0, n) < 0.3
    tone = _tone(rng.uniform(10.0, 300.0, n), rng.uniform(0, 2 * np.pi, n))
    vib += (other * rng.uniform(0.005, 0.03, n))[:, None, None] * tone[:, :, None]

    # Imbalance: a rotating force at 1x, so the radial axes are in quadrature.
    amp = np.where(label == IMBALANCE, 0.005 + 0.35 * severity, 0.0)
    vib[:, :, 0] += amp[:, None] * _tone(shaft_hz, phase)
    vib[:, :, 1] += amp[:, None] * _tone(shaft_hz, phase - np.pi / 2)
    axial = amp * rng.uniform(0.05, 0.15, n)
    vib[:, :, 2] += axial[:, None] * _tone(shaft_hz, phase + rng.uniform(0, 2 * np.pi, n))

    # Misalignment: 2x dominant with some 1x, and a large axial component.
    amp = np.where(label == MISALIGNMENT, 0.008 + 0.27 * severity, 0.0)
    one_x = amp * rng.uniform(0.3, 0.6, n)
    axial_ratio = rng.uniform(1.0, 1.8, n)
    for axis, ratio in ((0, 1.0), (1, 1.0), (2, axial_ratio)):
        p = rng.uniform(0.0, 2 * np.pi, n)
        vib[:, :, axis] += (ratio * amp)[:, None] * _tone(2 * shaft_hz, p)
        vib[:, :, axis] += (ratio * one_x)[:, None] * _tone(shaft_hz, p + rng.uniform(0, 1, n))

    bearing = label == BEARING_WEAR
    if bearing.any():
        vib[bearing] += _bearing_impulses(rng, severity[bearing], shaft_hz[bearing])
    return vib


def _bearing_impulses(
    rng: np.random.Generator, severity: np.ndarray, shaft_hz: np.ndarray
) -> np.ndarray:
    """Impulse train at the defect frequency, each ringing a decaying resonance: [m, WINDOW, 3]."""
    m = int(severity.shape[0])
    defect_hz = shaft_hz * rng.uniform(3.5, 3.6, m)
    resonance_hz = rng.uniform(250.0, 400.0, m)
    decay_s = rng.uniform(0.002, 0.005, m)
    peak = 0.01 + 1.0 * severity  # g
    start = rng.uniform(-1.0, 0.0, m) / defect_hz  # the first impulse may predate the window
    k = np.arange(_MAX_IMPULSES)
    # Rolling elements slip a little: each impulse is late or early by up to 1% of a period.
    jitter = rng.normal(0.0, 0.01, (m, _MAX_IMPULSES)) / defect_hz[:, None]
    when = start[:, None] + k[None, :] / defect_hz[:, None] + jitter  # [m, K]
    strength = peak[:, None] * rng.uniform(0.7, 1.3, (m, _MAX_IMPULSES))
    dt = _T[None, None, :] - when[:, :, None]  # [m, K, WINDOW]
    ring = np.exp(-np.clip(dt, 0.0, None) / decay_s[:, None, None])
    ring *= np.sin(2 * np.pi * resonance_hz[:, None, None] * dt) * (dt >= 0)
    shock = np.einsum("mk,mkt->mt", strength, ring)
    direction = np.stack(
        [rng.uniform(0.6, 1.0, m), rng.uniform(0.6, 1.0, m), rng.uniform(0.2, 0.5, m)], axis=1
    )
    return shock[:, :, None] * direction[:, None, :]


def _slow_levels(
    rng: np.random.Generator, label: np.ndarray, severity: np.ndarray, load: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample casing temperature (°C), current (A) and sound level (dB SPL)."""
    n = int(label.shape[0])
    ambient = rng.uniform(15.0, 35.0, n)
    temperature = ambient + 20.0 + 12.0 * load + rng.normal(0.0, 1.5, n)
    hot = label == OVERHEATING
    # Blocked cooling or winding faults: well above the normal band however cool the room is.
    temperature = np.where(hot, 70.0 + 30.0 * severity + rng.normal(0.0, 1.5, n), temperature)
    temperature += rng.normal(0.0, 0.5, n)  # probe calibration

    current = 4.0 + 8.0 * load + rng.normal(0.0, 0.2, n)
    current += np.where(hot, 0.3 + 1.2 * severity, 0.0)
    current *= rng.uniform(0.98, 1.02, n)  # clamp-meter calibration

    sound = 62.0 + 8.0 * load + rng.normal(0.0, 1.5, n)
    shaking = (label == IMBALANCE) | (label == MISALIGNMENT)
    sound += np.where(shaking, (1.0 + 3.0 * severity) * rng.uniform(0.5, 1.0, n), 0.0)
    sound += np.where(label == BEARING_WEAR, 3.0 + 7.0 * severity, 0.0)
    return temperature, current, sound


def _defect_rate(rng: np.random.Generator, label: np.ndarray, severity: np.ndarray) -> np.ndarray:
    n = int(label.shape[0])
    rate = rng.beta(4.0, 196.0, n)  # mean 0.02
    shaking = (label == IMBALANCE) | (label == MISALIGNMENT)
    rate = rate + np.where(shaking, rng.uniform(0.0, 0.03, n) * severity, 0.0)
    return np.clip(rate, 0.0, 1.0)
