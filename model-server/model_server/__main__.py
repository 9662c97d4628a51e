"""`python -m model_server`: serve with the settings found in the environment."""

from model_server.app import serve
from model_server.settings import ServerSettings


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    serve(ServerSettings())


if __name__ == "__main__":
    main()
