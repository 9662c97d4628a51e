"""Test helpers as a package, for the tests and the benchmarks alike (never imported by product
code): one model-server launcher, one daemon loop, one fault-injecting queue, the invariants.

- ``model_server``: ``python -m model_server`` as a real process, killable, and its model id;
- ``fault_proxy``: an HTTP proxy that fails chosen model-server requests;
- ``deployment``: the resources of a ``Settings`` (migrated database), publishing, table rows;
- ``daemon``: the Dagster daemon's part around the sensor (tick, launch new run keys, repeat);
- ``queues``: a request queue that delegates to a real one and fails at a chosen step;
- ``invariants``: nothing lost, nothing duplicated, nothing stuck;
- ``processes``: child processes in their own session, free ports, health waits;
- ``transactions``: a transaction run in a thread, waited for until it finishes or blocks;
- ``ledger_states``: ledger rows brought into a chosen state through the product's code.

Operator tools (``make stack``, screenshots, the compose rehearsal, ``make demo``) are in
``batchinfer_tools``.
"""
