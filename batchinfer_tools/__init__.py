"""Developer and operator tools, outside the product package and its wheel.

- ``demo``: ``make demo``, the walkthrough end to end in a scratch directory;
- ``readiness``: the one "ready" line ``make run`` prints;
- ``stack``: ``make stack``, PostgreSQL and the Pub/Sub emulator around ``make run``;
- ``screenshots``: the README's screenshots (``tools/screenshots``);
- ``compose_rehearsal``: compose.yaml without a Docker engine (``tools/compose-rehearsal``).

They start processes through ``batchinfer_testing`` (the same launchers the tests use).
"""
