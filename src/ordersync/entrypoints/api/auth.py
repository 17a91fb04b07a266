"""Bearer API keys with scopes. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from ordersync.config import ApiKeyConfig, Scope
from ordersync.entrypoints.api.errors import ApiProblem


class ApiKeys:
    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self._keys = [(k.id, k.key.get_secret_value().encode(), frozenset(k.scopes)) for k in keys]

    def authenticate(self, authorization: str | None) -> tuple[str, frozenset[Scope]]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiProblem(
                401, "unauthorized", "an `Authorization: Bearer <key>` header is required"
            )
        presented = token.strip().encode()
        found: tuple[str, frozenset[Scope]] | None = None
        # Compare against every key (no early exit) so timing does not reveal which matched.
        for key_id, secret, scopes in self._keys:
            if hmac.compare_digest(presented, secret):
                found = (key_id, scopes)
        if found is None:
            raise ApiProblem(401, "unauthorized", "the API key is not valid")
        return found


def require(scope: Scope) -> Callable[[Request], str]:
    """A dependency: the calling key's id, if it holds `scope`."""

    def dependency(request: Request) -> str:
        keys: ApiKeys = request.app.state.api_keys
        key_id, scopes = keys.authenticate(request.headers.get("authorization"))
        if scope not in scopes:
            raise ApiProblem(403, "forbidden", f"this API key lacks the {scope.value!r} scope")
        return key_id

    return dependency
