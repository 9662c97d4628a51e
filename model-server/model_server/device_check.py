"""Which CUDA the installed torch was built for, and whether this machine's driver can run it.

Two checks, one rule: the serving image's CUDA libraries must be ones the GPU's NVIDIA driver
runs. Cloud Run's L4 instances have driver 535.216.03, which is CUDA 12.2 (Cloud Run, "GPU
support for services"). A CUDA 12.x build runs on any driver from 525.60.13 through CUDA's
minor-version compatibility, as long as it needs no PTX JIT (NVIDIA, "CUDA Compatibility",
minor version compatibility); PyTorch's CUDA 12.6 wheels carry sm_86 machine code, which runs
on the L4's sm_89 without JIT. A CUDA 13 build needs driver 580 or newer and does not start on
535, so:

* at build time (``python -m model_server.device_check --build``, a Dockerfile step) the image
  fails if any CUDA 13 library is installed: an ``nvidia-*-cu13`` distribution, ``cuda-toolkit``
  13, a ``libcudart.so.13`` anywhere on the library paths, or a torch built for CUDA 13;
* at start (``check_device`` from ``python -m model_server``) one line says which torch, which
  CUDA it was built for, which driver and which device the server got, and ``MODEL_DEVICE=cuda``
  without a usable device stops the server with one line naming both versions, instead of a
  stack trace from the backend's load.

Everything the checks read comes in as arguments (installed distributions, library folders,
the driver's version file), so tests feed them a machine's facts without a GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# The newest CUDA major version the deployment's driver runs (Cloud Run L4: driver 535 = 12.2).
MAX_CUDA_MAJOR = 12
# Minimum Linux driver per CUDA major version for minor-version compatibility (NVIDIA CUDA
# Toolkit release notes, "CUDA Toolkit and Minimum Required Driver Version").
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
_CU13_DISTRIBUTION = re.compile(r"^nvidia-[a-z0-9-]+-cu13$")
_CUDART_13 = re.compile(r"^libcudart\.so\.13(\.|$)")
_DRIVER_LINE = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)")


class DeviceUnavailableError(RuntimeError):
    """MODEL_DEVICE asks for a device this machine cannot give torch."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the start-up line reports.

    torch_cuda: ``torch.version.cuda`` ("12.6"), None for a CPU build.
    driver: the NVIDIA kernel driver's version ("535.216.03"), None without a driver.
    driver_cuda: the newest CUDA the driver runs natively ("12.2", from ``cuDriverGetVersion``),
        None without a driver.
    device_name: ``torch.cuda.get_device_name(0)`` when torch sees a CUDA device, else None.
    """

    torch_version: str
    torch_cuda: str | None
    driver: str | None
    driver_cuda: str | None
    device_name: str | None

    @property
    def driver_text(self) -> str:
        """'535.216.03 (CUDA 12.2)', or what of it is known."""
        if self.driver is None and self.driver_cuda is None:
            return "none"
        cuda = f" (CUDA {self.driver_cuda})" if self.driver_cuda else ""
        return f"{self.driver or 'unknown version'}{cuda}"

    def line(self, setting: str) -> str:
        """One log line: the setting, torch and its CUDA, the driver, the device chosen."""
        device = f"cuda ({self.device_name})" if self.device_name else "cpu"
        return (
            f"model server device: MODEL_DEVICE={setting}, torch {self.torch_version} "
            f"built for CUDA {self.torch_cuda or 'none (CPU build)'}, NVIDIA driver "
            f"{self.driver_text}, device {device}"
        )


def cuda_major(version: str | None) -> int | None:
    """12 for "12.6"; None for None."""
    return int(version.split(".")[0]) if version else None


def cuda13_libraries(
    distributions: Iterable[tuple[str, str]], library_dirs: Iterable[Path]
) -> list[str]:
    """Every CUDA 13 library among installed (name, version) pairs and library folders.

    Sorted, each named as found (``nvidia-cublas-cu13 13.1.0.3``, a file path), so the build
    log says what to remove.
    """
    found: set[str] = set()
    for name, version in distributions:
        normalized = re.sub(r"[-_.]+", "-", name).lower()
        if _CU13_DISTRIBUTION.match(normalized) or (
            normalized == "cuda-toolkit" and cuda_major(version) == 13
        ):
            found.add(f"{normalized} {version}")
    for folder in library_dirs:
        if folder.is_dir():
            found.update(
                str(path)
                for path in folder.rglob("libcudart.so.13*")
                if _CUDART_13.match(path.name)
            )
    return sorted(found)


def build_problems(
    torch_cuda: str | None,
    distributions: Iterable[tuple[str, str]],
    library_dirs: Iterable[Path],
) -> list[str]:
    """Why this image would not run on the deployment's driver; empty when it would."""
    problems = []
    major = cuda_major(torch_cuda)
    if major is not None and major > MAX_CUDA_MAJOR:
        problems.append(
            f"torch is built for CUDA {torch_cuda}, which needs NVIDIA driver "
            f">= {MIN_DRIVER.get(major, 'unknown')}; the deployment's driver runs CUDA "
            f"{MAX_CUDA_MAJOR}.x at most: install torch from a cu12x index"
        )
    libraries = cuda13_libraries(distributions, library_dirs)
    if libraries:
        problems.append(f"CUDA 13 libraries are installed: {', '.join(libraries)}")
    return problems


def driver_version(version_file: Path = DRIVER_VERSION_FILE) -> str | None:
    """The NVIDIA kernel driver's version from its /proc file; None without a driver."""
    try:
        text = version_file.read_text()
    except OSError:
        return None
    match = _DRIVER_LINE.search(text)
    return match.group(1) if match else None


def driver_cuda_version(library: str = "libcuda.so.1") -> str | None:
    """The newest CUDA the loaded driver runs ("12.2"), from the driver API; None without one."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def require_device(setting: str, facts: DeviceFacts) -> None:
    """Raise, in one line naming both versions, when MODEL_DEVICE=cuda finds no usable device."""
    if setting != "cuda" or facts.device_name:
        return
    major = cuda_major(facts.torch_cuda)
    if major is None:
        cause = "torch is a CPU build (torch.version.cuda is None)"
    elif facts.driver is None and facts.driver_cuda is None:
        cause = f"torch is built for CUDA {facts.torch_cuda} but no NVIDIA driver is loaded"
    else:
        cause = (
            f"torch is built for CUDA {facts.torch_cuda} (needs NVIDIA driver "
            f">= {MIN_DRIVER.get(major, 'unknown')}) and the driver is {facts.driver_text}"
        )
    raise DeviceUnavailableError(
        f"MODEL_DEVICE=cuda but torch sees no CUDA device: {cause}; rebuild the image with a "
        "torch for the driver's CUDA, or set MODEL_DEVICE=auto or cpu"
    )


def current_facts(version_file: Path = DRIVER_VERSION_FILE) -> DeviceFacts:
    """This process's torch, driver and first CUDA device."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return DeviceFacts(
        torch.__version__,
        torch.version.cuda,
        driver_version(version_file),
        driver_cuda_version(),
        name,
    )


def check_device(setting: str) -> DeviceFacts:
    """Print the start-up line to stderr; exit with one line if MODEL_DEVICE cannot be met."""
    facts = current_facts()
    print(facts.line(setting), file=sys.stderr, flush=True)
    try:
        require_device(setting, facts)
    except DeviceUnavailableError as exc:
        raise SystemExit(str(exc)) from None
    return facts


def installed_distributions() -> list[tuple[str, str]]:
    """(name, version) of every distribution this interpreter sees."""
    return [(dist.metadata["Name"] or "", dist.version) for dist in metadata.distributions()]


def library_dirs() -> list[Path]:
    """Where a CUDA runtime could be loaded from: site-packages and the loader's paths."""
    folders = [Path(p) for p in sys.path if p.endswith("site-packages")]
    folders += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    folders += [Path("/usr/local/cuda/lib64"), Path("/usr/lib/x86_64-linux-gnu")]
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """``--build``: exit 1 if the image holds CUDA 13 libraries; else print the start-up line."""
    parser = argparse.ArgumentParser(prog="python -m model_server.device_check")
    parser.add_argument("--build", action="store_true", help="check the image's libraries")
    args = parser.parse_args(argv)
    if not args.build:
        from model_server.settings import ServerSettings

        print(current_facts().line(ServerSettings().model_device))
        return 0
    import torch

    problems = build_problems(torch.version.cuda, installed_distributions(), library_dirs())
    for problem in problems:
        print(f"device_check: {problem}", file=sys.stderr)
    if not problems:
        print(f"device_check: torch {torch.__version__}, CUDA {torch.version.cuda}: no CUDA 13")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
