from __future__ import annotations

import numpy as np
import pytest

from training import sensors
from training.sensors import CHANNELS, STATES, generate

N = 1000


@pytest.fixture(scope="module")
def batch() -> sensors.SensorBatch:
    return generate(N, seed=11)


def _by_state(batch: sensors.SensorBatch, state: str) -> np.ndarray:
    return batch.window[batch.label == STATES.index(state)].astype(np.float64)


def _spectrum(windows: np.ndarray) -> np.ndarray:
    """|rfft| of the mean-removed vibration axes, [n, bins, 3]; bins are 4 Hz apart."""
    vib = windows[:, :, :3] - windows[:, :, :3].mean(axis=1, keepdims=True)
    return np.abs(np.fft.rfft(vib * np.hanning(sensors.WINDOW)[None, :, None], axis=1))


def _band(windows: np.ndarray, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Spectral energy per sample and axis between lo_hz and hi_hz: [n, 3]."""
    freqs = np.fft.rfftfreq(sensors.WINDOW, 1 / sensors.SAMPLE_RATE_HZ)
    keep = (freqs >= lo_hz) & (freqs < hi_hz)
    return (_spectrum(windows)[:, keep, :] ** 2).sum(axis=1)


def _kurtosis(windows: np.ndarray) -> np.ndarray:
    vib = windows[:, :, :3] - windows[:, :, :3].mean(axis=1, keepdims=True)
    return (vib**4).mean(axis=1) / (vib**2).mean(axis=1) ** 2


def test_contract_constants():
    assert CHANNELS == ("vib_x", "vib_y", "vib_z", "temperature_c", "current_a", "sound_db")
    assert STATES == ("normal", "imbalance", "misalignment", "bearing_wear", "overheating")
    assert sensors.SAMPLE_RATE_HZ == 1024
    assert sensors.WINDOW == 256


def test_shapes_and_dtypes(batch):
    assert batch.window.shape == (N, 256, 6)
    assert batch.window.dtype == np.float32
    assert batch.defect_rate.shape == (N, 1)
    assert batch.defect_rate.dtype == np.float32
    assert batch.label.shape == (N,)
    assert batch.label.dtype == np.int64
    assert np.isfinite(batch.window).all()


def test_same_seed_same_bytes_different_seed_different():
    a, b, c = generate(40, seed=3), generate(40, seed=3), generate(40, seed=4)
    assert a.window.tobytes() == b.window.tobytes()
    assert a.defect_rate.tobytes() == b.defect_rate.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert a.window.tobytes() != c.window.tobytes()
    assert not np.array_equal(a.label, c.label)


def test_edge_sizes():
    assert generate(0, seed=1).window.shape == (0, 256, 6)
    assert generate(1, seed=1).window.shape == (1, 256, 6)
    with pytest.raises(ValueError, match="n must be"):
        generate(-1, seed=1)


def test_classes_present_and_balanced(batch):
    counts = np.bincount(batch.label, minlength=len(STATES))
    assert counts.sum() == N
    assert counts.min() >= N // len(STATES) - 1
    # Shuffled, not in blocks: the first tenth already holds every state.
    assert set(batch.label[: N // 10].tolist()) == set(range(len(STATES)))


def test_slow_channels_in_physical_ranges(batch):
    means = batch.window[:, :, 3:].mean(axis=1)
    temperature, current, sound = means[:, 0], means[:, 1], means[:, 2]
    assert ((temperature > 10) & (temperature < 110)).all()
    assert ((current > 3) & (current < 15)).all()
    assert ((sound > 50) & (sound < 100)).all()
    normal = temperature[batch.label == STATES.index("normal")]
    assert ((normal > 30) & (normal < 72)).all()
    assert ((batch.defect_rate >= 0) & (batch.defect_rate <= 1)).all()
    # Slow channels are slow: within a window they wander by sensor noise, not degrees.
    assert batch.window[:, :, 3].std(axis=1).max() < 1.0


def test_overheating_is_hot_and_draws_more_current(batch):
    hot, normal = _by_state(batch, "overheating"), _by_state(batch, "normal")
    hot_t, normal_t = hot[:, :, 3].mean(axis=1), normal[:, :, 3].mean(axis=1)
    assert hot_t.mean() > normal_t.mean() + 25
    assert np.quantile(hot_t, 0.05) > 68
    assert hot[:, :, 4].mean() > normal[:, :, 4].mean()
    # Vibration as normal.
    ratio = _band(hot, 15, 35).mean() / _band(normal, 15, 35).mean()
    assert 0.7 < ratio < 1.4


def test_imbalance_is_strong_radial_1x_in_quadrature(batch):
    imb, normal = _by_state(batch, "imbalance"), _by_state(batch, "normal")
    one_x_imb, one_x_normal = _band(imb, 15, 35), _band(normal, 15, 35)
    assert one_x_imb[:, :2].mean() > 10 * one_x_normal[:, :2].mean()
    assert one_x_imb[:, 2].mean() < 0.1 * one_x_imb[:, 0].mean()  # little axial
    # x leads y by a quarter turn at 1x on the clearly imbalanced motors.
    spec = np.fft.rfft(imb[:, :, :2] - imb[:, :, :2].mean(axis=1, keepdims=True), axis=1)
    peak = np.abs(spec[:, 4:9, 0]).argmax(axis=1) + 4
    rows = np.arange(len(imb))
    phase = np.angle(spec[rows, peak, 0] / spec[rows, peak, 1])
    strong = one_x_imb[:, 0] > np.median(one_x_imb[:, 0])
    assert np.abs(np.abs(phase[strong]) - np.pi / 2).mean() < 0.2


def test_misalignment_is_2x_with_large_axial(batch):
    mis, imb, normal = (_by_state(batch, s) for s in ("misalignment", "imbalance", "normal"))
    assert _band(mis, 35, 60).mean() > 10 * _band(normal, 35, 60).mean()
    axial_share = _band(mis, 15, 60)[:, 2] / _band(mis, 15, 60)[:, :2].mean(axis=1)
    imb_share = _band(imb, 15, 60)[:, 2] / _band(imb, 15, 60)[:, :2].mean(axis=1)
    assert np.median(axial_share) > 1.0 > np.median(imb_share) * 5


def test_bearing_wear_is_impulsive_high_frequency_and_loud(batch):
    bear, normal = _by_state(batch, "bearing_wear"), _by_state(batch, "normal")
    assert _kurtosis(bear)[:, 0].mean() > 1.5 * _kurtosis(normal)[:, 0].mean()
    assert _band(bear, 200, 450)[:, 0].mean() > 50 * _band(normal, 200, 450)[:, 0].mean()
    assert bear[:, :, 5].mean() > normal[:, :, 5].mean() + 3


def test_defect_rate_is_a_weak_vibration_hint(batch):
    rate = batch.defect_rate[:, 0]
    normal = rate[batch.label == STATES.index("normal")]
    shaking = rate[np.isin(batch.label, [STATES.index("imbalance"), STATES.index("misalignment")])]
    assert 0.01 < normal.mean() < 0.03
    assert shaking.mean() > normal.mean()
    # Weak: plenty of faulty motors sit inside the healthy range.
    assert (shaking < np.quantile(normal, 0.9)).mean() > 0.3
