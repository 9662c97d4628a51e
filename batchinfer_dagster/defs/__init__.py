"""The Dagster layer: assets, checks, jobs, the sensor, the schedule, partitions, resources.

Everything here is a thin Dagster object over the domain (``batchinfer_dagster.ledger``,
``prediction``, ``feature_import`` ...), which imports nothing from this package; the code location
(``batchinfer_dagster.definitions``) collects these objects around the resources that
``deployments`` builds from the settings.
"""
