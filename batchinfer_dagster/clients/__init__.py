"""Dagster-free clients of the outside systems: request queue, feature store, model server.

Each system has one interface and a local and a Google implementation. Which one a deployment
uses is chosen once, by the Dagster resources in ``batchinfer_dagster.defs.resources``.
"""
