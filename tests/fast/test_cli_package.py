"""The ``cli/`` package: every command registered once, ``python -m`` as good as the console
script, start-up without Dagster or SQLAlchemy, the everyday commands without Dagster, and no
SQL of its own (that is ``queries.py``'s).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchinfer_dagster import cli as cli_package
from batchinfer_dagster.cli import GROUP_MODULES, cli, serve

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
    ran = subprocess.run(
        [sys.executable, "-m", "batchinfer_dagster.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"BATCHINFER_HOME": str(tmp_path / "home"), "PYTHONPATH": ":".join(sys.path)},
    )
    # Named batchinfer, as the console script is (``test_cli_state.py`` runs that one).
    assert ran.stdout == f"batchinfer {version('batchinfer')}\n"


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


# The commands a user runs every few minutes; each must start without Dagster (or pandas).
EVERYDAY = (
    (["--version"], 0),
    (["status"], 0),
    (["publish", "--ids", "1"], 0),
    (["predict", "1"], 0),
    # No run has predicted record 1: "no prediction for record 1 yet", exit 1.
    (["prediction", "1"], 1),
)

# Run in a fresh interpreter whose imports of Dagster (and of pandas) are refused, so that a
# command that reaches them fails; the refusals are printed too, in case one is swallowed.
BLOCKED_RUN = """
import importlib.abc, json, sys

refused = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in ("dagster", "pandas") or top.startswith("dagster_"):
            refused.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Refuse())
from click.testing import CliRunner
from batchinfer_dagster import db, records
from batchinfer_dagster.cli import cli
from batchinfer_dagster.settings import load_settings

engine = db.create_app_engine(load_settings().resolved_database_url)
db.upgrade(engine)
records.add_records(engine, ["my card was charged twice"])
engine.dispose()
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    results.append([args, result.exit_code, result.output, repr(result.exception)])
print(json.dumps({"results": results, "refused": refused}))
"""


def test_everyday_commands_run_with_dagster_and_pandas_refused(tmp_path: Path) -> None:
    # A port nothing listens on: the model server is "unreachable" at once.
    ran = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, json.dumps([args for args, _ in EVERYDAY])],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={
            "BATCHINFER_HOME": str(tmp_path / "home"),
            "BATCHINFER_MODEL_URL": "http://127.0.0.1:9",
            "PYTHONPATH": ":".join(sys.path),
        },
    )
    report = json.loads(ran.stdout)
    assert report["refused"] == []
    exits = {" ".join(args): exit_code for args, exit_code, _, _ in report["results"]}
    assert exits == {" ".join(args): expected for args, expected in EVERYDAY}, report
    outputs = {" ".join(args): output for args, _, output, _ in report["results"]}
    assert json.loads(outputs["status"])["records"] == 1
    assert json.loads(outputs["predict 1"])["record_id"] == 1
    assert outputs["prediction 1"] == "no prediction for record 1 yet\n"


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


def test_serve_model_without_the_model_server_is_one_line_naming_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules: what find_spec reports for a package this environment lacks.
    monkeypatch.setitem(sys.modules, "model_server", None)
    monkeypatch.setattr(os, "execvp", lambda *args: pytest.fail(f"exec'd {args}"))
    result = CliRunner().invoke(cli, ["serve-model"])
    assert result.exit_code == 1
    assert result.output == f"Error: {serve.MODEL_SERVER_MISSING}\n"
    assert "pip install ./protocol ./model-server" in result.output


def test_serve_model_execs_the_model_server_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executed: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execvp", lambda file, args: executed.append((file, args)))
    result = CliRunner().invoke(cli, ["serve-model"])
    assert result.exit_code == 0, result.output
    assert executed == [(sys.executable, [sys.executable, "-m", "model_server"])]
