"""``MyBackend``: an application's own dogpile backend (a plain in-memory one)."""

from dogpile.cache.backends.memory import MemoryBackend


class MyBackend(MemoryBackend):
    pass
