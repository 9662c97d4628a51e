"""One Dagster resource per external system: database, request queue, feature store, model server.

Each is an abstract ``ConfigurableResource`` with a local and a Google implementation; the assets,
the sensor and the jobs type-hint the abstract class, ``batchinfer_dagster.defs.deployments``
picks the implementations from the settings, and tests pass their own through ``resources=``.
Their config shows in the Dagster UI; secrets are ``EnvVar`` references, shown by name.
"""
