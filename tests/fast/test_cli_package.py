"""The ``cli/`` package: every command registered once, ``python -m`` as good as the console
script, start-up without Dagster or SQLAlchemy, and no SQL of its own (that is ``queries.py``'s).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from batchinfer_dagster import cli as cli_package
from batchinfer_dagster.cli import (
    cli,
    infrastructure,
    predictions,
    records,
    requests,
    rollout,
    serve,
    status,
)

GROUP_MODULES = (records, requests, predictions, rollout, status, infrastructure, serve)

# Every command of `batchinfer` before the split into cli/ (cli.py at 2f9144f), by name.
COMMANDS = {
    "add-data-point", "delete-data-point", "edit-data-point", "load", "import-data",
    "publish", "predict", "dead-letters",
    "lineage", "prediction", "export", "evaluate",
    "rollout",
    "status", "where",
    "db", "pubsub",
    "serve-model", "deploy-model",
}  # fmt: skip

# Modules that, imported for ``--version`` or ``where``, would make every start-up pay for them.
HEAVY = ("dagster", "sqlalchemy", "pandas", "httpx", "torch", "model_server")


def test_every_command_is_registered_once_from_one_group_module() -> None:
    declared = [command.name for module in GROUP_MODULES for command in module.COMMANDS]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(cli.commands) == COMMANDS


def test_python_dash_m_runs_the_same_command_as_the_console_script(tmp_path: Path) -> None:
    env = {"BATCHINFER_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(
        [sys.executable, "-m", "batchinfer_dagster.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
    )
    assert ran.stdout == f"batchinfer {version('batchinfer')}\n"
    where = subprocess.run(
        [sys.executable, "-m", "batchinfer_dagster.cli", "where", "home"],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
    )
    assert where.stdout == f"{tmp_path / 'home'}\n"


def heavy_modules_after(tmp_path: Path, *args: str) -> list[str]:
    """The ``HEAVY`` modules a fresh interpreter holds after running ``batchinfer ARGS``."""
    script = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from batchinfer_dagster.cli import cli\n"
        f"assert CliRunner().invoke(cli, {list(args)!r}).exit_code == 0\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"BATCHINFER_HOME": str(tmp_path / "home"), "PYTHONPATH": ":".join(sys.path)},
    )
    return json.loads(ran.stdout)


def test_version_and_help_import_no_heavy_module(tmp_path: Path) -> None:
    assert heavy_modules_after(tmp_path, "--version") == []
    assert heavy_modules_after(tmp_path, "publish", "--help") == []


def test_where_imports_neither_dagster_nor_pandas(tmp_path: Path) -> None:
    # SQLAlchemy renders the database URL without its password (Settings.state_locations).
    assert heavy_modules_after(tmp_path, "where") == ["sqlalchemy"]


def sqlalchemy_uses(source: str) -> set[str]:
    """Names used off ``sqlalchemy`` (``sa.select`` → ``select``) and calls that run SQL."""
    tree = ast.parse(source)
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "sqlalchemy"
    }
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
    }
    from_imports = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
        for alias in node.names
    }
    runs_sql = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in {"execute", "exec_driver_sql", "scalar", "scalars", "connect", "begin"}
    }
    return used | from_imports | runs_sql


def test_the_cli_runs_no_sql_of_its_own() -> None:
    package = Path(cli_package.__file__).parent
    uses = {path.name: sqlalchemy_uses(path.read_text()) for path in package.glob("*.py")}
    # A type hint and printing a URL without its password; queries live in queries.py.
    assert set().union(*uses.values()) == {"Engine", "make_url"}, uses
