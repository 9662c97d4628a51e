"""`python -m model_server`: serve with the settings found in the environment."""

import os

# OpenMP worker threads busy-wait between parallel regions by default, on the very cores the
# tokenizer thread, the event loop and the clients of a small machine need: on 2 busy cores
# the embedding server spent twice the CPU per text with them spinning. libgomp reads this
# when torch is first imported, so it is set before any import of torch; a value the operator
# sets wins. (OMP_WAIT_POLICY is OpenMP's standard variable, not a setting of ours.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from model_server.app import serve  # noqa: E402
from model_server.settings import ServerSettings  # noqa: E402


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    serve(ServerSettings())


if __name__ == "__main__":
    main()
