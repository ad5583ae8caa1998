"""API keys: loaded once from the environment or a file, checked in constant time per request.

Keys never live in the spec (validation refuses `auth.api_keys`) and are never logged.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from ...spec.settings import AuthSettings
from ..errors import Unauthorized

BEARER = "bearer"


class AuthConfigError(Exception):
    """Auth is configured but a key source yields no key; `field` names the spec key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[bytes, ...]

    def check(self, authorization: str | None, api_key: str | None = None) -> None:
        """Raise Unauthorized unless `Authorization: Bearer <key>` or `x-api-key: <key>`
        (Anthropic's header) carries one of the keys."""
        token = bearer_token(authorization) or (api_key or "").strip() or None
        if token is None:
            raise Unauthorized(
                "Missing API key: send it as the header 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>'"
            )
        if not self.matches(token):
            raise Unauthorized("Incorrect API key provided")

    def matches(self, token: str) -> bool:
        """Compare against every key, without stopping early, so timing reveals nothing."""
        given = token.encode("utf-8", "surrogateescape")
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        return matched


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        return None
    return token


def load_api_keys(settings: AuthSettings, base_dir: Path) -> ApiKeys | None:
    """The keys from every configured source; None when auth is off.

    Each configured source must yield at least one key: a missing variable or file is a
    deployment mistake that must not silently leave the API open or locked.
    """
    if not settings.enabled:
        return None
    keys: list[str] = []
    if settings.api_keys_env is not None:
        keys += _keys_from_env(settings.api_keys_env)
    if settings.api_keys_file is not None:
        keys += _keys_from_file(base_dir / settings.api_keys_file)
    return ApiKeys(tuple(key.encode() for key in dict.fromkeys(keys)))


def _keys_from_env(name: str) -> list[str]:
    keys = [key.strip() for key in os.environ.get(name, "").split(",") if key.strip()]
    if not keys:
        raise AuthConfigError(
            "auth.api_keys_env", f"environment variable {name} is not set or empty"
        )
    return keys


def _keys_from_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(
            "auth.api_keys_file", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise AuthConfigError("auth.api_keys_file", f"{path} is not UTF-8 text") from None
    lines = (line.strip() for line in text.splitlines())
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise AuthConfigError("auth.api_keys_file", f"{path} holds no keys")
    return keys
