"""The model server's backends as tests and benchmarks build them: from its declared settings.

The backends and ``ForwardOptions`` take every setting as a required value, so that
``ServerSettings`` alone declares a default; these give a test the declared ones (the
environment ignored), with the few fields it is about changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model_server.runtime import ForwardOptions
from model_server.settings import ServerSettings

# The settings as declared, whatever MODEL_* variables the test process has.
DECLARED = ServerSettings.declared()
# What the nli backend puts a label into when a request names no template.
DEFAULT_TEMPLATE = DECLARED.model_default_template
# The embedding backend's softmax temperature.
EMBEDDING_TEMPERATURE = DECLARED.model_embedding_temperature


def forward_options(**changes: Any) -> ForwardOptions:
    """The server's declared forward options with ``changes`` (``ForwardOptions`` fields)."""
    return dataclasses.replace(DECLARED.forward_options, **changes)
