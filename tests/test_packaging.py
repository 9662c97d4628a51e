"""The product wheel holds the product only: the test helpers and operator tools stay in the
checkout (``pip wheel .`` lists ``batchinfer_dagster`` alone; this reads the same discovery
configuration without building)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_packages_only_batchinfer_dagster() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = config["tool"]["setuptools"]["packages"]["find"]

    packages = find_packages(str(ROOT), include=find["include"])

    assert {name.split(".")[0] for name in packages} == {"batchinfer_dagster"}
    assert "batchinfer_dagster.defs.resources" in packages
    assert (ROOT / "batchinfer_testing" / "__init__.py").exists()
    assert (ROOT / "batchinfer_tools" / "__init__.py").exists()
