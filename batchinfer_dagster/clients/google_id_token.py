"""Google ID tokens for a private Cloud Run model server (its invokers only)."""

from __future__ import annotations

import threading
from collections.abc import Generator

import httpx
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token

from batchinfer_dagster.clients.model_client import ModelRequestError, TransientModelError


class GoogleIdTokenAuth(httpx.Auth):
    """Bearer Google ID token for a private Cloud Run service (audience = its URL).

    The credentials come from Application Default Credentials (the metadata server on Cloud
    Run, a service-account key file locally); the token is reused until it is about to expire.
    """

    def __init__(self, audience: str, credentials: Credentials | None = None) -> None:
        self.audience = audience
        self._credentials = credentials
        self._request = google_requests.Request()
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid ID token for the audience, fetched again only when the cached one expired."""
        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials = id_token.fetch_id_token_credentials(
                        self.audience, request=self._request
                    )
                if not self._credentials.valid:
                    self._credentials.refresh(self._request)
            except auth_exceptions.DefaultCredentialsError as exc:
                raise ModelRequestError(
                    f"no Google credentials to sign an ID token for {self.audience}: {exc}. "
                    "Run on Google Cloud with a service account, or set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file."
                ) from exc
            except auth_exceptions.RefreshError as exc:
                raise TransientModelError(
                    f"fetching an ID token for {self.audience} failed: {exc}"
                ) from exc
            return str(self._credentials.token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request
