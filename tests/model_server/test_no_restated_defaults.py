"""A MODEL_* or AIP_* default or bound is written once, in ``ServerSettings``.

The model server's twin of ``tests/test_no_restated_defaults.py``: the objects the settings build
(``ForwardOptions``, ``EdgeLimits``, ``RequestLimits``) and the backends take required values, so
that a hand-built one cannot quietly differ from what the server runs (``ForwardOptions`` once
said 32 rows a batch where the server ran 64). docs/model-server.md lists every setting with its
default, checked here against the settings object.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from batchinfer_protocol.predict_request import RequestLimits
from model_server.backends.embedding import EmbeddingBackend
from model_server.backends.nli import NliBackend
from model_server.batching import DynamicBatcher
from model_server.connection_guard import EdgeLimits
from model_server.runtime import ForwardOptions
from model_server.settings import ServerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "model-server.md"
SECTION = "## Settings"

# Constructor parameters that may have defaults: overrides of a required value (a shorthand
# for one field of ``forward``), a name for the model's answers, and collaborators of tests.
NOT_SETTINGS = {"max_batch_size", "model_name", "observer", "max_queued_instances"}


@pytest.mark.parametrize("config", [ForwardOptions, EdgeLimits, RequestLimits])
def test_the_objects_settings_build_are_frozen_and_have_no_defaults(config: type) -> None:
    assert config.__dataclass_params__.frozen  # type: ignore[attr-defined]
    defaulted = [
        field.name
        for field in dataclasses.fields(config)
        if field.default is not dataclasses.MISSING
        or field.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == [], f"{config.__name__} restates defaults of ServerSettings: {defaulted}"


@pytest.mark.parametrize("cls", [EmbeddingBackend, NliBackend, DynamicBatcher])
def test_backends_and_the_batcher_default_no_setting(cls: type) -> None:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    defaulted = {p.name for p in parameters if p.default is not inspect.Parameter.empty}
    assert defaulted <= NOT_SETTINGS, f"{cls.__name__} defaults {defaulted - NOT_SETTINGS}"


def test_declared_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_MAX_BATCH_SIZE", "7")
    assert ServerSettings().model_max_batch_size == 7
    declared = ServerSettings.declared()
    assert declared.model_max_batch_size == ServerSettings.model_fields[
        "model_max_batch_size"
    ].get_default(call_default_factory=True)
    assert declared.forward_options.max_batch_size == declared.model_max_batch_size


def shown(default: object) -> str:
    """A default as the docs' table writes it."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def documented_defaults() -> dict[str, str]:
    """``{variable: default}`` of the table under ``## Settings`` in docs/model-server.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", section, re.M)
    return dict(rows)


def test_the_docs_list_every_setting_with_its_default() -> None:
    declared = {
        name.upper(): shown(field.get_default(call_default_factory=True))
        for name, field in ServerSettings.model_fields.items()
    }
    assert documented_defaults() == declared
