"""Signed or encrypted values: ``security_strategy = none | mac | encrypt``.

Anyone who can write to a cache server can otherwise feed the application
forged values.  With a strategy set, every stored value is sealed with the
store's secret and bound to three things, so that a copied value is refused
(:class:`~kvs.exception.TamperedValue`) and never deserialized:

* its **backend key**: a value moved to another key does not open;
* the **format version** (``2``): a value cannot be read as another format;
* its **expiry deadline** (wall clock, or "never"): a value that had a TTL,
  written back after it expired, does not open.

``mac``
    HMAC-SHA256 over all of the above and the serialized value.  Values stay
    readable on the server but cannot be forged, altered, moved or revived.
``encrypt``
    AES-256-GCM (``cryptography`` package) with all of the above as associated
    data: values are also unreadable on the server.

**Replay window.**  A seal proves who wrote a value for which key, not that it
is the newest one.  Someone who can write to the backend can still put back an
*older* value of the same key, as long as that value's own deadline has not
passed: forever for values written without a TTL, until its deadline for
values with one.  A value read up to :data:`EXPIRY_GRACE` seconds past its
deadline reads as missing (backends round TTLs up; clocks differ); after
that it raises ``TamperedValue``.

**Keyed key names.**  With a strategy set (and no explicit ``key_mangler``),
backend key names are ``HMAC-SHA256(naming key, key)`` instead of SHA-1, so
someone who can list the backend cannot confirm that ``session:alice``
exists, as keystonemiddleware's memcache protection does.

**Key rotation.**  ``secret_keys`` lists secrets newest first (``secret_key``
is a one-item list).  Values are sealed with the newest and open with any
listed one (each seal carries a 4-byte id of its secret, so no guessing).  Key
names are derived from the *oldest* listed secret, so adding a secret does not
move any key.  Procedure: (1) put the new secret first in every process's
list; (2) keep the old ones listed until every value sealed with them has been
rewritten or has expired; (3) then remove them, except the oldest, which
names the keys: removing it too re-keys the whole store (like a flush).

It is applied as the innermost proxy (a :class:`~kvs.proxy.LeaseProxy`), so
it sees exactly the bytes the backend stores, locked (fenced) writes included.
Secrets are kept only as derived keys, never in messages, logs or ``repr()``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE

from kvs import exception
from kvs.proxy import LeaseProxy

STRATEGIES = ("none", "mac", "encrypt")

_MAC_MAGIC = b"kvsM2"
_ENC_MAGIC = b"kvsE2"
_VERSION = b"2"
_KEY_ID_SIZE = 4
_DEADLINE_SIZE = 8  # milliseconds since the epoch, big-endian; 0: never expires
_TAG_SIZE = 32
_NONCE_SIZE = 12
_HEAD = 5 + _KEY_ID_SIZE + _DEADLINE_SIZE

#: Seconds after its sealed deadline during which a value reads as *missing*
#: rather than as tampered: backends may keep a value a little longer than
#: asked (memcached rounds TTLs up to whole seconds, plus one), and this
#: host's clock may be ahead of the server's.  Later, it can only be a value
#: written back: TamperedValue.
EXPIRY_GRACE = 3.0


class Expired(exception.KVSError):
    """A sealed value within :data:`EXPIRY_GRACE` of its deadline: read as missing."""


def _derive(secret: str, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose, so mac, encrypt and key names never share a key."""
    return hmac.new(secret.encode("utf-8"), b"kvs-security-v2:" + purpose,
                    hashlib.sha256).digest()


def _key_id(secret: str) -> bytes:
    return _derive(secret, b"key-id")[:_KEY_ID_SIZE]


def _deadline(ttl: float | None) -> bytes:
    millis = 0 if ttl is None else int((time.time() + ttl) * 1000) + 1
    return millis.to_bytes(_DEADLINE_SIZE, "big")


def _bound(key: str, key_id: bytes, deadline: bytes) -> bytes:
    """What every seal is bound to besides the value: version, secret, deadline, key."""
    encoded = key.encode("utf-8")
    return _VERSION + key_id + deadline + len(encoded).to_bytes(4, "big") + encoded


class SealCodec:
    """Seals serialized bytes to their key, version and deadline; opens them or refuses.

    Thread-safe (no state changes after construction).
    """

    magic = b""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._ids = [_key_id(secret) for secret in secrets]
        self._key_names = _derive(secrets[-1], b"key-names")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} with {len(self._ids)} secret(s)>"

    def key_name(self, key: str) -> str:
        """The keyed, fixed-length backend name of a user's key."""
        return hmac.new(self._key_names, key.encode("utf-8"), hashlib.sha256).hexdigest()

    def seal(self, key: str, value: bytes, ttl: float | None) -> bytes:
        raise NotImplementedError

    def open(self, key: str, sealed: bytes) -> bytes:
        raise NotImplementedError

    def _header(self, sealed: bytes) -> tuple[int, bytes, bytes]:
        """(index of the secret, key id, deadline) of a sealed value, or refuse it."""
        if len(sealed) < _HEAD or not sealed.startswith(self.magic):
            raise exception.TamperedValue("stored value is not sealed by this kvs format")
        key_id = sealed[5:5 + _KEY_ID_SIZE]
        deadline = sealed[5 + _KEY_ID_SIZE:_HEAD]
        try:
            index = self._ids.index(key_id)
        except ValueError:
            raise exception.TamperedValue(
                "stored value is sealed with a secret this store does not list") from None
        millis = int.from_bytes(deadline, "big")
        if millis and time.time() > millis / 1000:
            if time.time() <= millis / 1000 + EXPIRY_GRACE:
                raise Expired("stored value is past its sealed expiry")
            raise exception.TamperedValue(
                "stored value is past its sealed expiry (an expired value written back)")
        return index, key_id, deadline


class MacCodec(SealCodec):
    magic = _MAC_MAGIC

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__(secrets)
        self._keys = [_derive(secret, b"mac") for secret in secrets]

    def _tag(self, index: int, bound: bytes, value: bytes) -> bytes:
        return hmac.new(self._keys[index], bound + value, hashlib.sha256).digest()

    def seal(self, key: str, value: bytes, ttl: float | None) -> bytes:
        key_id, deadline = self._ids[0], _deadline(ttl)
        tag = self._tag(0, _bound(key, key_id, deadline), value)
        return self.magic + key_id + deadline + tag + value

    def open(self, key: str, sealed: bytes) -> bytes:
        index, key_id, deadline = self._header(sealed)
        tag, value = sealed[_HEAD:_HEAD + _TAG_SIZE], sealed[_HEAD + _TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(index, _bound(key, key_id, deadline), value)):
            raise exception.TamperedValue("stored value failed its HMAC check")
        return value


class EncryptCodec(SealCodec):
    magic = _ENC_MAGIC

    def __init__(self, secrets: Sequence[str]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise exception.ConfigurationError(
                "security_strategy = encrypt needs the 'cryptography' package "
                "(pip install 'dogpile-kvs[security]')", option="security_strategy") from None
        super().__init__(secrets)
        self._aeads = [AESGCM(_derive(secret, b"encrypt")) for secret in secrets]

    def seal(self, key: str, value: bytes, ttl: float | None) -> bytes:
        key_id, deadline = self._ids[0], _deadline(ttl)
        nonce = os.urandom(_NONCE_SIZE)
        body = self._aeads[0].encrypt(nonce, value, _bound(key, key_id, deadline))
        return self.magic + key_id + deadline + nonce + body

    def open(self, key: str, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        index, key_id, deadline = self._header(sealed)
        nonce, body = sealed[_HEAD:_HEAD + _NONCE_SIZE], sealed[_HEAD + _NONCE_SIZE:]
        try:
            return bytes(self._aeads[index].decrypt(nonce, body, _bound(key, key_id, deadline)))
        except (InvalidTag, ValueError):
            raise exception.TamperedValue("stored value failed decryption") from None


def secrets_from(secret_key: Any, secret_keys: Any) -> list[str]:
    """The secrets, newest first, from ``secret_key`` or ``secret_keys``; validated."""
    if secret_key is not None and secret_keys:
        raise exception.ConfigurationError(
            "give secret_key or secret_keys, not both", option="secret_keys")
    if secret_keys is None or secret_keys == []:
        secrets: Any = [] if secret_key is None else [secret_key]
        option = "secret_key"
    else:
        secrets = [secret_keys] if isinstance(secret_keys, str) else secret_keys
        option = "secret_keys"
    if not isinstance(secrets, (list, tuple)) or not secrets or not all(
            isinstance(secret, str) and secret for secret in secrets):
        raise exception.ConfigurationError(
            f"{option} must be a non-empty secret string (secret_keys: a list of them, "
            f"newest first)", option=option)
    return list(secrets)


def make_codec(strategy: str, secret_key: Any = None,
               secret_keys: Any = None) -> SealCodec | None:
    """The codec for ``strategy``, or None for ``none``; validates the secrets."""
    if strategy not in STRATEGIES:
        raise exception.ConfigurationError(
            f"unknown security_strategy {strategy!r}; known: {', '.join(STRATEGIES)}",
            option="security_strategy")
    if strategy == "none":
        return None
    try:
        secrets = secrets_from(secret_key, secret_keys)
    except exception.ConfigurationError as error:
        raise exception.ConfigurationError(
            f"security_strategy = {strategy} needs a non-empty secret_key (or secret_keys): "
            f"{error.message}", option=error.context.get("option", "secret_key")) from None
    return MacCodec(secrets) if strategy == "mac" else EncryptCodec(secrets)


def keyed_mangler(codec: SealCodec) -> Callable[[str], str]:
    """Key names keyed by the store's secret (see the module docstring)."""
    return codec.key_name


class SecurityProxy(LeaseProxy):
    """Seals values on their way to the backend and checks them on the way back.

    A :class:`~kvs.proxy.LeaseProxy` that overrides only the value hooks, so
    plain, multi and fenced writes are all sealed alike, each with its TTL.
    """

    def __init__(self, codec: SealCodec) -> None:
        super().__init__()
        self._codec = codec

    def encode_value(self, key: str, value: bytes, ttl: float | None) -> bytes:
        return self._codec.seal(key, value, ttl)

    def decode_value(self, key: str, stored: bytes) -> Any:
        try:
            return self._codec.open(key, bytes(stored))
        except Expired:
            return NO_VALUE  # expired a moment ago: the backend has not dropped it yet
        except exception.TamperedValue as exc:
            raise exception.TamperedValue(f"{exc.message} (backend key {key[:60]!r})") from None
