"""Zero-shot text classification server on the Vertex AI custom-container contract."""

__all__ = ["__version__"]

__version__ = "0.1.0"
