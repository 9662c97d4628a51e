"""In-memory fakes behind our own interfaces, for the fast test tier (no server, no process).

``queue.InMemoryQueue`` (a ``RequestQueue`` with leases, redelivery and dead letters on an
injected clock), ``feature_store.InMemoryFeatureStore`` (a ``FeatureStore`` over a dict) and
``model_client.ScriptedModelClient`` (a ``ModelClient`` that answers, refuses chosen texts, or
fails transiently on cue), ``runs.DictRuns`` (a ``ledger.CurrentRuns`` over a dict);
``resources`` gives each a Dagster resource to pass as ``resources=``.
The integration and reliability tiers keep the real services. ``google`` is of another kind:
Google's wire APIs (BigQuery, Vertex AI, Cloud Run, the token endpoint) served on loopback, for
the Google clients' tests, which have no local form of those services to run against.
"""
