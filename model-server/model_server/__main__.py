"""`python -m model_server`: serve with the settings found in the environment."""

from model_server.app import serve
from model_server.device_check import check_device
from model_server.settings import ServerSettings


def main() -> None:
    """Read the settings from the environment and serve until stopped."""
    settings = ServerSettings()
    check_device(settings.model_device)
    serve(settings)


if __name__ == "__main__":
    main()
