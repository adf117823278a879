"""The one way errors from below become :mod:`kvs.exception` errors.

Each layer that talks to something foreign (a client library, SQLite, a
stock dogpile backend) has one *translation*: a function that maps an
exception to the kvs error to raise instead, or to ``None`` to let it through
unchanged.  The translation is applied in one of two equivalent forms, by
where the layer knows its context:

``@translated``
    around a method, calling ``self.translate_error(exc, operation, args)``:
    the store (which names the user's key, ``args[0]``) and the Redis
    backends (which name the server and the command).
``with Translating(translate):``
    around a block, when the context is a value rather than ``self``: one
    memcached server, one SQLite file.
``except Exception as exc: raise_translated(self, exc, operation, args)``
    the same as ``@translated``, written out in the store's hottest methods
    (``get``, ``set``, ``update``): a wrapper frame costs about 0.15 µs,
    a fifth of a ``kvs.memory`` get, while an unraised ``try`` costs nothing.

Both re-raise the replacement ``from`` the original, and both leave
:class:`BaseException`\\ s that are not :class:`Exception` (``KeyboardInterrupt``,
``SystemExit``) alone.  A translation never returns a message holding a secret.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Concatenate, NoReturn, ParamSpec, Protocol, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: A translation: the error to raise instead of ``exc``, or None to keep ``exc``.
Translate = Callable[[Exception], "BaseException | None"]


class TranslatesErrors(Protocol):
    """What ``@translated`` needs of ``self``."""

    def translate_error(self, exc: Exception, operation: str,
                        args: tuple[Any, ...]) -> BaseException | None: ...


_S = TypeVar("_S", bound=TranslatesErrors)


def raise_translated(owner: TranslatesErrors, exc: Exception, operation: str,
                     args: tuple[Any, ...]) -> NoReturn:
    """Raise ``owner``'s translation of ``exc``, or ``exc`` itself if there is none."""
    replacement = owner.translate_error(exc, operation, args)
    if replacement is None or replacement is exc:
        raise exc
    raise replacement from exc


def translated(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], _R]:
    """Run ``method`` with its errors translated by ``self.translate_error``."""
    operation = method.__name__

    @functools.wraps(method)
    def wrapper(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            raise_translated(self, exc, operation, args)

    return wrapper


class Translating:
    """Context manager: errors raised in the block go through ``translate``.

    Reusable and thread-safe (it keeps no per-use state), so a layer builds
    one per context and enters it as often as it likes.
    """

    __slots__ = ("_translate",)

    def __init__(self, translate: Translate) -> None:
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not isinstance(exc, Exception):
            return
        replacement = self._translate(exc)
        if replacement is not None and replacement is not exc:
            raise replacement from exc
