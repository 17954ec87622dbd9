"""Accelerator readings: NVML where an NVIDIA driver answers, Jetson's sysfs GPU load where present.

Where neither answers there are no accelerator metrics at all: a zero would claim an idle GPU.
A probe that fails while reading (driver gone, GPU fallen off the bus) yields nothing for that
scrape and logs once, so a sick GPU shows as missing series, not as a frozen value.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Jetson (Tegra) integrated GPU load in per mille, by L4T release.
JETSON_LOAD_FILES = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")


@dataclass(frozen=True)
class Reading:
    device: str  # "0", "1", ... (NVML index) or "jetson"
    name: str
    utilization_ratio: float
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    temperature_celsius: float | None = None


class AcceleratorProbe(Protocol):
    def read(self) -> list[Reading]: ...


class NvmlProbe:
    """NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._failed = False

    @classmethod
    def open(cls, nvml: ModuleType | Any | None = None) -> NvmlProbe | None:
        """A probe if NVML is installed and a driver answers, else None."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError:
                return None
        try:
            nvml.nvmlInit()
            if nvml.nvmlDeviceGetCount() < 1:
                return None
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("no NVML accelerator metrics", extra={"reason": str(exc)})
            return None
        return cls(nvml)

    def read(self) -> list[Reading]:
        nvml = self._nvml
        try:
            readings = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                readings.append(
                    Reading(
                        device=str(index),
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        utilization_ratio=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
                        memory_used_bytes=float(memory.used),
                        memory_total_bytes=float(memory.total),
                        temperature_celsius=float(
                            nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                        ),
                    )
                )
        except Exception as exc:
            if not self._failed:
                log.warning("NVML read failed", extra={"error": str(exc)})
            self._failed = True
            return []
        self._failed = False
        return readings


class JetsonProbe:
    """A Jetson's integrated GPU: only its load is in sysfs (memory is shared with the CPU)."""

    def __init__(self, load_file: Path) -> None:
        self._load_file = load_file

    @classmethod
    def open(cls, root: Path = Path("/")) -> JetsonProbe | None:
        for relative in JETSON_LOAD_FILES:
            path = root / relative
            if path.is_file():
                return cls(path)
        return None

    def read(self) -> list[Reading]:
        try:
            per_mille = int(self._load_file.read_text().strip())
        except (OSError, ValueError):
            return []
        return [Reading(device="jetson", name="tegra", utilization_ratio=per_mille / 1000)]


def open_probes(nvml: Any | None = None, sysfs_root: Path = Path("/")) -> list[AcceleratorProbe]:
    probes: list[AcceleratorProbe] = []
    nvml_probe = NvmlProbe.open(nvml)
    if nvml_probe is not None:
        probes.append(nvml_probe)
    jetson = JetsonProbe.open(sysfs_root)
    if jetson is not None:
        probes.append(jetson)
    return probes


def read_all(probes: list[AcceleratorProbe]) -> list[Reading]:
    return [reading for probe in probes for reading in probe.read()]
