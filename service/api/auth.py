"""Bearer API keys. Every /v1 route requires one; a key sees only its own objects."""

from __future__ import annotations

from flask import g, request

from service.api.context import db
from service.api.errors import ApiError
from service.keys import find_key


def require_api_key() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = find_key(session=db(), key=token.strip())
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    g.api_key = key
