"""Signed or encrypted values: ``security_strategy = none | mac | encrypt``.

Anyone who can write to a cache server can otherwise feed the application
forged values.  With a strategy set, every stored value is bound to its
backend key and to the store's ``secret_key``:

``mac``
    HMAC-SHA256 over the backend key and the serialized value.  Values stay
    readable on the server but cannot be forged, altered or moved to another key.
``encrypt``
    AES-256-GCM (``cryptography`` package) with the backend key as associated
    data: values are also unreadable on the server.

A value that fails the check raises :class:`~kvs.exception.TamperedValue` and
is never deserialized.  This follows keystonemiddleware's
``memcache_security_strategy``.

It is applied as the innermost proxy (a :class:`~kvs.proxy.LeaseProxy`), so
it sees exactly the bytes the backend stores, locked (fenced) writes included.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from kvs import exception
from kvs.proxy import LeaseProxy

STRATEGIES = ("none", "mac", "encrypt")

_MAC_MAGIC = b"kvsM1"
_ENC_MAGIC = b"kvsE1"
_TAG_SIZE = 32
_NONCE_SIZE = 12


def _derive(secret: str, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose, so mac and encrypt never share a key."""
    return hmac.new(secret.encode("utf-8"), b"kvs-security-v1:" + purpose,
                    hashlib.sha256).digest()


class SealCodec:
    """Seals serialized bytes to their backend key; opens them or raises TamperedValue."""

    magic = b""

    def seal(self, key: str, value: bytes) -> bytes:
        raise NotImplementedError

    def open(self, key: str, sealed: bytes) -> bytes:
        raise NotImplementedError


class MacCodec(SealCodec):
    magic = _MAC_MAGIC

    def __init__(self, secret: str) -> None:
        self._key = _derive(secret, b"mac")

    def _tag(self, key: str, value: bytes) -> bytes:
        encoded = key.encode("utf-8")
        message = len(encoded).to_bytes(4, "big") + encoded + value
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def seal(self, key: str, value: bytes) -> bytes:
        return self.magic + self._tag(key, value) + value

    def open(self, key: str, sealed: bytes) -> bytes:
        head = len(self.magic)
        tag, value = sealed[head:head + _TAG_SIZE], sealed[head + _TAG_SIZE:]
        if not sealed.startswith(self.magic) or not hmac.compare_digest(
                tag, self._tag(key, value)):
            raise exception.TamperedValue("stored value failed its HMAC check")
        return value


class EncryptCodec(SealCodec):
    magic = _ENC_MAGIC

    def __init__(self, secret: str) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise exception.ConfigurationError(
                "security_strategy = encrypt needs the 'cryptography' package "
                "(pip install 'kvs[security]')", option="security_strategy") from None
        self._aead = AESGCM(_derive(secret, b"encrypt"))

    def seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        return self.magic + nonce + self._aead.encrypt(nonce, value, key.encode("utf-8"))

    def open(self, key: str, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        head = len(self.magic)
        nonce, body = sealed[head:head + _NONCE_SIZE], sealed[head + _NONCE_SIZE:]
        if not sealed.startswith(self.magic):
            raise exception.TamperedValue("stored value is not encrypted")
        try:
            return bytes(self._aead.decrypt(nonce, body, key.encode("utf-8")))
        except (InvalidTag, ValueError):
            raise exception.TamperedValue("stored value failed decryption") from None


def make_codec(strategy: str, secret_key: str | None) -> SealCodec | None:
    """The codec for ``strategy``, or None for ``none``; validates the secret."""
    if strategy not in STRATEGIES:
        raise exception.ConfigurationError(
            f"unknown security_strategy {strategy!r}; known: {', '.join(STRATEGIES)}",
            option="security_strategy")
    if strategy == "none":
        return None
    if not secret_key or not isinstance(secret_key, str):
        raise exception.ConfigurationError(
            f"security_strategy = {strategy} needs a non-empty secret_key",
            option="secret_key")
    return MacCodec(secret_key) if strategy == "mac" else EncryptCodec(secret_key)


class SecurityProxy(LeaseProxy):
    """Seals values on their way to the backend and checks them on the way back.

    A :class:`~kvs.proxy.LeaseProxy` that overrides only the value hooks, so
    plain, multi and fenced writes are all sealed alike.
    """

    def __init__(self, codec: SealCodec) -> None:
        super().__init__()
        self._codec = codec

    def encode_value(self, key: str, value: bytes) -> bytes:
        return self._codec.seal(key, value)

    def decode_value(self, key: str, stored: bytes) -> bytes:
        try:
            return self._codec.open(key, bytes(stored))
        except exception.TamperedValue as exc:
            raise exception.TamperedValue(f"{exc.message} (backend key {key[:60]!r})") from None
