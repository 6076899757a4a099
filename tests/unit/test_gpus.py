"""GPU discovery through the real NVML library, and the fallback to configuration."""

from __future__ import annotations

from pathlib import Path

import pynvml
import pytest

from gpuflow.compute.local import LocalSubprocess
from gpuflow.gpu.discovery import discover_gpu_indices


def _nvml_device_count() -> int | None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_discovery_matches_what_nvml_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    count = _nvml_device_count()
    if count is None:
        # No driver here: NVML raises NVMLError_LibraryNotFound and discovery says "unknown".
        assert discover_gpu_indices() is None
    else:
        assert discover_gpu_indices() == list(range(count))


def test_without_nvml_and_without_configuration_jobs_get_no_devices(tmp_path: Path) -> None:
    if _nvml_device_count() is not None:
        pytest.skip("this machine has an NVIDIA driver: the fallback does not apply")
    assert LocalSubprocess(lock_dir=tmp_path).offered_devices() == []


def test_configured_devices_win_over_discovery(tmp_path: Path) -> None:
    assert LocalSubprocess(devices=[2, 5], lock_dir=tmp_path).offered_devices() == [2, 5]


def test_cuda_visible_devices_narrows_what_nvml_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    count = _nvml_device_count()
    if not count:
        pytest.skip("needs an NVIDIA GPU and driver (NVML)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert discover_gpu_indices() == [0]
