"""batchinfer: offline (batch) zero-shot inference orchestrated by Dagster."""
