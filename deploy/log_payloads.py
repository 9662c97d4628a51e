"""Print what a Cloud Run job's container printed, from `gcloud logging read --format=json`.

deploy/run.sh pipes the log entries of one execution here (a JSON array on stdin). Cloud
Run's logging agent stores a line of stdout that is a JSON object as the entry's
``jsonPayload`` and any other line as ``textPayload`` (Cloud Run, "Logging and viewing logs":
structured logging); every `batchinfer` command prints one JSON object per line, so its
answers are all ``jsonPayload``. Each entry is printed as one line: the text as it was, the
JSON object compact on one line (``json.dumps``'s separators, as the CLI prints it).

The agent keeps the object as a protobuf Struct, whose numbers are doubles: a whole number
may come back as 1.0 and is printed as 1 again. The keys the agent takes into the entry itself
(``severity``, ``time``, ``timestamp``, ``logging.googleapis.com/*``) are not in the payload;
the CLI prints none of them.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def whole_numbers(value: Any) -> Any:
    """The payload with every integral float (a Struct's 1.0) turned back into an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value


def payload_line(entry: dict[str, Any]) -> str | None:
    """The line one log entry holds; None for an entry with neither payload (an audit entry)."""
    if "jsonPayload" in entry:
        return json.dumps(whole_numbers(entry["jsonPayload"]))
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    return None


def main() -> int:
    """Read the entries (a JSON array, or nothing) from stdin; print a line per entry."""
    text = sys.stdin.read().strip()
    entries = json.loads(text) if text else []
    for entry in entries:
        line = payload_line(entry)
        if line is not None:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
