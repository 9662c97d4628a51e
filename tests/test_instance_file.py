"""``make run``'s instance file: new settings reach a home its user never edited, edits stay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools import instance_file
from batchinfer_tools.instance_file import (
    BEFORE_UPDATE,
    INSTANCE_FILE,
    NEW_FILE,
    SHIPPED,
    SHIPPED_RECORD,
    Outcome,
    install_instance_file,
    main,
)

OLD = b"run_monitoring:\n  enabled: true\n"
NEW = b"run_monitoring:\n  enabled: true\n  max_runtime_seconds: 3600\n"


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    path = tmp_path / "dagster.local.yaml"
    path.write_bytes(OLD)
    return path


def test_a_fresh_home_gets_the_shipped_file_and_its_record(tmp_path: Path, shipped: Path) -> None:
    home = tmp_path / "home"
    assert install_instance_file(home, shipped) is Outcome.WRITTEN
    assert (home / INSTANCE_FILE).read_bytes() == OLD
    assert (home / SHIPPED_RECORD).read_bytes() == OLD
    assert install_instance_file(home, shipped) is Outcome.CURRENT


def test_an_unedited_file_gets_the_new_settings(tmp_path: Path, shipped: Path) -> None:
    home = tmp_path / "home"
    install_instance_file(home, shipped)
    shipped.write_bytes(NEW)
    assert install_instance_file(home, shipped) is Outcome.UPDATED
    assert (home / INSTANCE_FILE).read_bytes() == NEW
    assert (home / SHIPPED_RECORD).read_bytes() == NEW
    assert (home / BEFORE_UPDATE).read_bytes() == OLD
    assert not (home / NEW_FILE).exists()


def test_an_edited_file_is_kept_and_the_new_one_written_beside_it(
    tmp_path: Path, shipped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    install_instance_file(home, shipped)
    edited = OLD + b"telemetry:\n  enabled: true\n"
    (home / INSTANCE_FILE).write_bytes(edited)
    shipped.write_bytes(NEW)
    assert main([str(home)], shipped) == 0
    assert (home / INSTANCE_FILE).read_bytes() == edited
    assert (home / NEW_FILE).read_bytes() == NEW
    # The record stays the old shipped file: an edit is still told apart on the next start.
    assert (home / SHIPPED_RECORD).read_bytes() == OLD
    assert str(home / NEW_FILE) in capsys.readouterr().err
    # Once the user takes the new file, the notice's file goes away.
    (home / NEW_FILE).replace(home / INSTANCE_FILE)
    assert install_instance_file(home, shipped) is Outcome.CURRENT
    assert not (home / NEW_FILE).exists()


def test_a_home_made_by_cp_n_is_updated_only_when_it_holds_a_version_we_shipped(
    tmp_path: Path, shipped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Homes made before the record was kept have no ``dagster.yaml.shipped``."""
    monkeypatch.setattr(instance_file, "LEGACY_SHIPPED", {hashlib.sha256(OLD).hexdigest()})
    shipped.write_bytes(NEW)
    legacy, edited = tmp_path / "legacy", tmp_path / "edited"
    for home, content in ((legacy, OLD), (edited, OLD + b"\n")):
        home.mkdir()
        (home / INSTANCE_FILE).write_bytes(content)
    assert install_instance_file(legacy, shipped) is Outcome.UPDATED
    assert (legacy / INSTANCE_FILE).read_bytes() == NEW
    assert install_instance_file(edited, shipped) is Outcome.KEPT
    assert (edited / INSTANCE_FILE).read_bytes() == OLD + b"\n"


def test_the_shipped_file_is_not_a_legacy_version_and_bounds_a_run() -> None:
    """A legacy digest equal to today's file would be harmless, but says the list is stale;
    the shipped file fails a run whose worker died with its code server at production's bound
    (deploy/dagster.yaml, which Terraform checks against the Cloud Run job's timeout)."""
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() not in instance_file.LEGACY_SHIPPED
    local = yaml.safe_load(SHIPPED.read_text())["run_monitoring"]
    production = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    assert local["enabled"] is True
    assert local["max_runtime_seconds"] == production["run_monitoring"]["max_runtime_seconds"]
    assert local["max_runtime_seconds"] > 0  # 0 is Dagster's "no limit"
