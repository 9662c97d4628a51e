"""Clients of the outside services: request queue, feature store, model server."""
