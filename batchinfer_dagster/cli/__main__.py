"""``python -m batchinfer_dagster.cli``: the ``batchinfer`` command without its console script
(named ``batchinfer`` in its usage and ``--version`` lines, as the console script is)."""

from batchinfer_dagster.cli import main

main(prog_name="batchinfer")
