"""Accelerator probes. NVML cannot run here (no NVIDIA driver): a stand-in module with NVML's
names and shapes plays the driver, and the test says so. Jetson's sysfs is a real file tree."""

from __future__ import annotations

from types import SimpleNamespace

from agent.metrics.accelerators import JetsonProbe, NvmlProbe, open_probes, read_all


class FakeNvml:
    """Stand-in for ``pynvml`` (nvidia-ml-py): the calls NvmlProbe makes, with two GPUs."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, count: int = 2, fail_init: bool = False) -> None:
        self.count = count
        self.fail_init = fail_init
        self.fail_reads = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if self.fail_reads:
            raise self.NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100" if handle == 0 else b"NVIDIA L4"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=37 + handle, memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=1024**3 * (handle + 1), total=80 * 1024**3, free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 61


def test_nvml_readings_per_gpu():
    probe = NvmlProbe.open(FakeNvml())
    assert probe is not None
    first, second = probe.read()
    assert (first.device, first.name, first.utilization_ratio) == ("0", "NVIDIA H100", 0.37)
    assert first.memory_used_bytes == 1024**3
    assert first.memory_total_bytes == 80 * 1024**3
    assert first.temperature_celsius == 61
    assert (second.device, second.name) == ("1", "NVIDIA L4")


def test_no_driver_or_no_gpu_means_no_probe():
    assert NvmlProbe.open(FakeNvml(fail_init=True)) is None
    assert NvmlProbe.open(FakeNvml(count=0)) is None


def test_a_gpu_that_fails_mid_run_yields_no_readings_not_stale_ones():
    nvml = FakeNvml()
    probe = NvmlProbe.open(nvml)
    assert probe is not None
    nvml.fail_reads = True
    assert probe.read() == []
    nvml.fail_reads = False
    assert len(probe.read()) == 2


def test_jetson_sysfs_load(tmp_path):
    load = tmp_path / "sys/devices/platform/gpu.0/load"
    load.parent.mkdir(parents=True)
    load.write_text("523\n")
    probe = JetsonProbe.open(tmp_path)
    assert probe is not None
    (reading,) = probe.read()
    assert (reading.device, reading.utilization_ratio) == ("jetson", 0.523)
    assert reading.memory_used_bytes is None
    load.write_text("garbage")
    assert probe.read() == []


def test_this_machine_without_gpu_has_no_probes(tmp_path):
    # The real import path: nvidia-ml-py is not installed here, or no driver answers.
    assert open_probes(sysfs_root=tmp_path) == []
    assert read_all([]) == []
