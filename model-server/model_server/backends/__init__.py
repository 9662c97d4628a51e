"""Zero-shot backends behind one interface; MODEL_BACKEND picks one."""

from __future__ import annotations

from model_server.backends.base import Backend, Instance, resolve_device
from model_server.model_source import resolve_model_name, resolve_model_path
from model_server.settings import ServerSettings

__all__ = ["Backend", "Instance", "build_backend"]


def build_backend(settings: ServerSettings) -> Backend:
    """The backend MODEL_BACKEND names, configured but not loaded yet."""
    device = resolve_device(settings.model_device)
    model_path = resolve_model_path(settings)
    if settings.model_backend == "nli":
        from model_server.backends.nli import NliBackend

        return NliBackend(
            model_path,
            device,
            forward=settings.forward_options,
            default_template=settings.model_default_template,
            model_name=resolve_model_name(settings),
        )
    from model_server.backends.embedding import EmbeddingBackend

    return EmbeddingBackend(
        model_path,
        device,
        forward=settings.forward_options,
        temperature=settings.model_embedding_temperature,
        model_name=resolve_model_name(settings),
    )
