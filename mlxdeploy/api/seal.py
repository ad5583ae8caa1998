"""Thinking given to a client, sealed so that it comes back unaltered: the Responses API's
`encrypted_content` (clients that keep no state on the server, `store: false`, send it back)
and the Messages API's thinking `signature`.

A seal is a Fernet token (AES-128-CBC with an HMAC-SHA256 tag, from `cryptography`) of the
thinking's text, under a key derived from the spec's `reasoning.seal_key`: any replica, and
the same deployment after a restart, opens it. Without a key each start makes its own."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken

CONTEXT = b"mlxdeploy reasoning seal v1\x00"


class Sealer:
    def __init__(self, key: str | None = None):
        secret = key.encode() if key is not None else secrets.token_bytes(32)
        derived = hashlib.sha256(CONTEXT + secret).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str | None:
        """The text sealed, or None when `sealed` was not made by this key or was altered."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, ValueError, UnicodeError):
            return None
