"""The serving image's CUDA check (model_server/device_check.py), fed a machine's facts on CPU.

Cloud Run's L4 driver (535, CUDA 12.2) runs CUDA 12.x builds and no CUDA 13 build: the image
must fail to build with a CUDA 13 library in it, and the server must say at start which torch,
CUDA, driver and device it got, failing in one line when MODEL_DEVICE=cuda finds no device.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from model_server import device_check
from model_server.device_check import (
    DeviceFacts,
    DeviceUnavailableError,
    build_problems,
    cuda13_libraries,
    driver_version,
    require_device,
)

ROOT = Path(__file__).resolve().parents[2]
L4_DRIVER = "535.216.03"

CUDA12_WHEEL = [("torch", "2.13.0+cu126"), ("nvidia-cublas-cu12", "12.6.4.1")]
CUDA13_WHEEL = [
    ("torch", "2.13.0"),
    ("nvidia-cublas-cu13", "13.1.0.3"),
    ("nvidia_cuda_runtime_cu13", "13.0.96"),
    ("cuda-toolkit", "13.0.2"),
]


def test_a_cuda12_image_passes() -> None:
    assert build_problems("12.6", CUDA12_WHEEL + [("cuda-toolkit", "12.6.3")], []) == []


def test_a_cpu_image_passes() -> None:
    assert build_problems(None, [("torch", "2.13.0+cpu")], []) == []


def test_every_cuda13_distribution_is_named() -> None:
    assert cuda13_libraries(CUDA13_WHEEL, []) == [
        "cuda-toolkit 13.0.2",
        "nvidia-cublas-cu13 13.1.0.3",
        "nvidia-cuda-runtime-cu13 13.0.96",
    ]


def test_a_cuda13_runtime_file_is_found_and_a_cuda12_one_is_not(tmp_path: Path) -> None:
    libs = tmp_path / "site-packages" / "nvidia" / "cu13" / "lib"
    libs.mkdir(parents=True)
    (libs / "libcudart.so.13").touch()
    (libs / "libcudart.so.12").touch()
    (tmp_path / "libcudart.so.130-not-a-version").touch()
    assert cuda13_libraries([], [tmp_path, tmp_path / "absent"]) == [str(libs / "libcudart.so.13")]


def test_torch_built_for_cuda13_fails_the_build() -> None:
    problems = build_problems("13.0", [("torch", "2.13.0")], [])
    assert len(problems) == 1
    assert "CUDA 13.0" in problems[0]
    assert ">= 580.65.06" in problems[0]


@pytest.mark.parametrize("cuda", ["12.0", "12.9"])
def test_every_cuda12_minor_passes(cuda: str) -> None:
    assert build_problems(cuda, [], []) == []


@pytest.mark.parametrize(
    "text",
    [
        f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {L4_DRIVER}  Wed Oct 30 2024\n",
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {L4_DRIVER}  Release Build\n",
    ],
)
def test_driver_version_is_read_from_the_kernel_modules_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "version"
    path.write_text(text + "GCC version:  gcc version 12.2.0\n")
    assert driver_version(path) == L4_DRIVER


def test_no_driver_is_none(tmp_path: Path) -> None:
    assert driver_version(tmp_path / "absent") is None
    assert device_check.driver_cuda_version("libcuda-that-does-not-exist.so") is None


def test_cuda_without_a_device_fails_in_one_line_naming_both_versions() -> None:
    facts = DeviceFacts("2.13.0", "13.0", L4_DRIVER, "12.2", None)
    with pytest.raises(DeviceUnavailableError) as raised:
        require_device("cuda", facts)
    message = str(raised.value)
    assert "\n" not in message
    assert "CUDA 13.0" in message
    assert f"{L4_DRIVER} (CUDA 12.2)" in message
    assert ">= 580.65.06" in message


def test_cuda_with_a_cpu_build_says_so() -> None:
    with pytest.raises(DeviceUnavailableError, match="CPU build"):
        require_device("cuda", DeviceFacts("2.13.0+cpu", None, None, None, None))


def test_cuda_without_a_driver_says_so() -> None:
    with pytest.raises(DeviceUnavailableError, match="no NVIDIA driver is loaded"):
        require_device("cuda", DeviceFacts("2.13.0", "12.6", None, None, None))


@pytest.mark.parametrize("setting", ["auto", "cpu"])
def test_other_settings_start_without_a_device(setting: str) -> None:
    require_device(setting, DeviceFacts("2.13.0", "12.6", None, None, None))


def test_cuda_with_a_device_starts_and_the_line_names_everything() -> None:
    facts = DeviceFacts("2.13.0+cu126", "12.6", L4_DRIVER, "12.2", "NVIDIA L4")
    require_device("cuda", facts)
    assert facts.line("cuda") == (
        "model server device: MODEL_DEVICE=cuda, torch 2.13.0+cu126 built for CUDA 12.6, "
        f"NVIDIA driver {L4_DRIVER} (CUDA 12.2), device cuda (NVIDIA L4)"
    )


def test_the_server_exits_with_the_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = DeviceFacts("2.13.0", "13.0", L4_DRIVER, "12.2", None)
    monkeypatch.setattr(device_check, "current_facts", lambda: facts)
    with pytest.raises(SystemExit) as raised:
        device_check.check_device("cuda")
    assert str(raised.value).startswith("MODEL_DEVICE=cuda but torch sees no CUDA device")
    assert capsys.readouterr().err == facts.line("cuda") + "\n"


def test_this_interpreter_passes_and_a_cuda13_runtime_beside_it_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check on a real interpreter (CPU torch here) as the Dockerfile runs it, then with a
    CUDA 13 runtime on the loader's path (the system's folders left out: a development
    machine may have a CUDA 13 toolkit installed)."""
    site = [Path(p) for p in device_check.library_dirs() if p.name == "site-packages"]
    monkeypatch.setattr(device_check, "library_dirs", lambda: site)
    assert device_check.main(["--build"]) == 0
    (tmp_path / "libcudart.so.13.0.96").touch()
    monkeypatch.setattr(device_check, "library_dirs", lambda: [*site, tmp_path])
    assert device_check.main(["--build"]) == 1
    assert "libcudart.so.13.0.96" in capsys.readouterr().err


def test_the_serving_image_installs_a_cuda12_torch_and_runs_the_check() -> None:
    dockerfile = (ROOT / "model-server" / "Dockerfile").read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.", dockerfile, re.MULTILINE)
    assert base
    assert int(base.group(1)) == device_check.MAX_CUDA_MAJOR
    index = re.search(r"^ARG TORCH_INDEX_URL=\S+/whl/cu(\d+)$", dockerfile, re.MULTILINE)
    assert index
    assert index.group(1).startswith(str(device_check.MAX_CUDA_MAJOR))
    assert "python3 -m model_server.device_check --build" in dockerfile
    main = (ROOT / "model-server" / "model_server" / "__main__.py").read_text()
    assert "check_device(settings.model_device)" in main
