"""How a predict call can fail, as a caller must react: retry later, or never.

Shared by the model clients (which raise them, from the HTTP status or the Vertex AI error) and
the domain (``batchinfer_dagster.prediction``, which dead-letters a refused batch and lets a
transient failure retry), so the domain catches them without importing a client.
"""

from __future__ import annotations


class ModelError(RuntimeError):
    """The model server did not give predictions."""


class TransientModelError(ModelError):
    """Down, overloaded or slow (a connection error, 5xx, 429): retry later."""


class ModelRequestError(ModelError):
    """The server refused the request as invalid (4xx other than 429): retrying cannot help."""
