"""What a slow client may hold: a bounded number of connections, each for a bounded time.

uvicorn (0.54) bounds neither. A connection that opens and then sends its headers slowly, or
never, is kept for good: the keep-alive timer is armed only after a response, and any byte
received cancels it. Connections are accepted until the process runs out of file descriptors;
1,100 such connections took the server down for as long as they stayed open (every accept then
failed with EMFILE, health checks included). So the server's HTTP protocol is uvicorn's, with:

- a slot per connection, at most ``max_connections``: a connection past the limit takes the
  slot of the connection that has waited longest for its request's headers, which is closed; when
  every slot holds a request being read or answered, the newcomer gets a 503 and is closed. A
  slow client can thus delay others by at most the header deadline, never refuse them, and the
  descriptors in use stay within the limit (each refused one is closed as soon as accepted);
- a deadline for the headers of each request, counted from when the connection is made or the
  previous response was sent, whatever bytes arrive meanwhile (trickling does not extend it),
  and a bound on the bytes those headers may take; past either, the connection is closed
  (nginx's ``client_header_timeout`` does the same, without an answer);
- a deadline for a response the client does not read: from the moment the response outgrows
  the transport's buffer (uvicorn then waits, holding the request's task and its slot, until
  the client reads) to its end; past it the connection is aborted.

The request body's deadline is the predict route's (``app.read_body_within``): it answers 408.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

# Descriptors the process needs besides its connections: the listening socket, model and
# tokenizer files, log, the event loop's and the thread pools' own (eventfds, pipes), torch.
RESERVED_FILES = 256


class Droppable(Protocol):
    def drop(self, reason: str) -> None: ...


C = TypeVar("C", bound=Droppable)


@dataclass(frozen=True)
class EdgeLimits:
    """The settings of the HTTP edge (MODEL_MAX_CONNECTIONS, MODEL_HEADER_TIMEOUT_SECONDS,
    MODEL_MAX_HEADER_BYTES; a response has MODEL_BODY_TIMEOUT_SECONDS, as a request body)."""

    max_connections: int
    header_timeout_seconds: float
    max_header_bytes: int
    send_timeout_seconds: float


class NoSlotError(Exception):
    """Every slot holds a connection whose request is being read or answered."""


class ConnectionSlots(Generic[C]):
    """Which connections are open, and which of them wait for a request's headers, oldest first.

    Only a waiting connection is ever evicted: it costs its client nothing but a reconnect, while
    a request in progress would lose its answer.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[C] = set()
        # Insertion order is the order in which they started waiting (dicts keep it).
        self.waiting: dict[C, None] = {}

    def admit(self, connection: C) -> C | None:
        """Give ``connection`` a slot; returns the waiting connection evicted to make room (the
        caller drops it), or raises NoSlotError when no connection may be evicted."""
        evicted = None
        if len(self.open) >= self.limit:
            if not self.waiting:
                raise NoSlotError
            evicted = next(iter(self.waiting))
            self.closed(evicted)
        self.open.add(connection)
        return evicted

    def waiting_for_request(self, connection: C) -> None:
        """``connection`` starts waiting for a request's headers (it goes to the back)."""
        self.waiting.pop(connection, None)
        if connection in self.open:
            self.waiting[connection] = None

    def request_started(self, connection: C) -> None:
        """``connection`` has a request's headers: it is no longer evictable."""
        self.waiting.pop(connection, None)

    def closed(self, connection: C) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)


def refusal_bytes(status: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the protocol's refusal body, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol:
    """Mixin over one of uvicorn's HTTP/1.1 protocols (h11 or httptools); see the module.

    Both of them set ``self.cycle`` to a new request/response cycle when a request's headers are
    complete, and call ``on_response_complete`` when its response is sent; the mixin watches
    those, so it does not depend on either parser.
    """

    limits: ClassVar[EdgeLimits]
    slots: ClassVar[ConnectionSlots[Any]]
    # Set by uvicorn's protocol classes.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    header_deadline: asyncio.TimerHandle | None = None
    header_bytes = 0
    send_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        try:
            evicted = self.slots.admit(self)
        except NoSlotError:
            logger.warning(
                "refused a connection: all %d connections have a request in progress "
                "(MODEL_MAX_CONNECTIONS)",
                self.limits.max_connections,
            )
            transport.write(
                refusal_bytes(
                    "503 Service Unavailable",
                    f"the server holds its {self.limits.max_connections} connections "
                    "(MODEL_MAX_CONNECTIONS), each with a request in progress; retry shortly",
                )
            )
            transport.close()
            return
        if evicted is not None:
            evicted.drop(
                f"{self.limits.max_connections} connections open (MODEL_MAX_CONNECTIONS); "
                "this one waited longest for its request"
            )
        self.await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_deadline()
        self.cancel_send_deadline()
        self.slots.closed(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not cycle:
            self.cancel_header_deadline()
            self.slots.request_started(self)
        elif self.header_deadline is not None:
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                self.drop(
                    f"over {self.limits.max_header_bytes} bytes without the end of the headers "
                    "(MODEL_MAX_HEADER_BYTES)"
                )

    def pause_writing(self) -> None:
        """The response outgrew the transport's buffer: the client must read it in time."""
        super().pause_writing()  # type: ignore[misc]
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(
                self.limits.send_timeout_seconds, self.abort_unread_response
            )

    def abort_unread_response(self) -> None:
        logger.info(
            "aborted a connection whose client did not read its response within %s s "
            "(MODEL_BODY_TIMEOUT_SECONDS)",
            self.limits.send_timeout_seconds,
        )
        self.send_deadline = None
        self.slots.closed(self)
        self.transport.abort()

    def cancel_send_deadline(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def on_response_complete(self) -> None:
        self.cancel_send_deadline()
        super().on_response_complete()  # type: ignore[misc]
        # A pipelined request may have started a new cycle already.
        if self.cycle.response_complete and not self.transport.is_closing():
            self.await_request()

    def await_request(self) -> None:
        """Start the deadline for the next request's headers."""
        self.cancel_header_deadline()
        self.header_bytes = 0
        self.slots.waiting_for_request(self)
        self.header_deadline = self.loop.call_later(
            self.limits.header_timeout_seconds,
            self.drop,
            f"no request headers within {self.limits.header_timeout_seconds} s "
            "(MODEL_HEADER_TIMEOUT_SECONDS)",
        )

    def cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def drop(self, reason: str) -> None:
        """Close a connection that is waiting for a request; it keeps nothing in progress."""
        self.cancel_header_deadline()
        self.slots.closed(self)
        if not self.transport.is_closing():
            logger.info("closed a connection: %s", reason)
            if self.transport.get_write_buffer_size():
                # A response the client has not read: close() would wait for it for good.
                self.transport.abort()
            else:
                self.transport.close()


def guarded_protocol(base: type[asyncio.Protocol], limits: EdgeLimits) -> type[asyncio.Protocol]:
    """uvicorn's protocol class ``base`` with the guard, its slots shared by every connection of
    one server (pass the result as ``uvicorn.run(http=...)``)."""
    return type(
        f"Guarded{base.__name__}",
        (GuardedProtocol, base),
        {"limits": limits, "slots": ConnectionSlots(limits.max_connections)},
    )


def ensure_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files so that ``max_connections`` fit beside the process's own.

    ``ValueError`` when the hard limit is too low: lower MODEL_MAX_CONNECTIONS, or raise the
    limit (``ulimit -n``, the container's ``nofile``).
    """
    needed = max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"MODEL_MAX_CONNECTIONS={max_connections} needs {needed} open files "
                f"({RESERVED_FILES} kept for the process), but the hard limit is {hard}: lower "
                "MODEL_MAX_CONNECTIONS or raise the limit (ulimit -n, the container's nofile)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
