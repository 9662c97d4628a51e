"""Channels of the generated Google gRPC clients: real endpoints, or the local fakes of tests."""

from __future__ import annotations

from typing import Any

import grpc
from google.api_core.client_options import ClientOptions

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_local_endpoint(endpoint: str) -> bool:
    """True for ``localhost:PORT`` and loopback addresses: the fakes and emulators of tests."""
    host = endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint
    return host.strip("[]") in LOCAL_HOSTS


def grpc_client_kwargs(transport_class: type, endpoint: str) -> dict[str, Any]:
    """Keyword arguments that point a generated ``*ServiceClient`` at ``endpoint``.

    A loopback endpoint gets a plaintext channel and no credentials (the local fakes speak no
    TLS and know no Google account); any other endpoint keeps TLS and Application Default
    Credentials and only overrides the host.
    """
    if is_local_endpoint(endpoint):
        channel = grpc.insecure_channel(
            endpoint,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        return {"transport": transport_class(channel=channel)}
    return {"client_options": ClientOptions(api_endpoint=endpoint)}
