"""The raw baseline of ``kvs.etcd``: what a user of etcd3gw writes by hand.

``etcd3gw.Etcd3Client(host, port, api_path="/v3/")`` on the first member of
the benchmark cluster (where kvs.etcd sends its calls too), with msgpack
exactly as kvs's default serializer encodes:

* get / set: ``client.get(key)[0]`` + unpack, pack + ``client.put(key, ...)``;
* get_multi / set_multi: one ``client.transaction`` of range / put requests
  (etcd3gw has no multi-get), split at etcd's default 128 operations per
  transaction as kvs.etcd splits;
* update / locked write: etcd3gw's ``Lock`` (``client.lock(id, ttl)``):
  ``acquire()`` (a lease grant, then a create-if-absent transaction), get,
  put, ``release()`` (a compare-and-delete transaction): 5 round trips.
  ``acquire()`` does not wait: it returns False while another holds the lock,
  so the loop retries it every ``poll`` seconds (the context manager ignores
  that False and would run the section without the lock, so it is not used).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.baselines import LOCK_TIMEOUT, LOCK_WAIT
from benchmarks.subjects import Section, Subject, pack, unpack

#: etcd's default --max-txn-ops (kvs.etcd splits its multi-key calls there too).
TXN_OPS = 128
#: Seconds between two acquire() attempts of a waiting raw lock.
LOCK_POLL = 0.001


class RawEtcd(Subject):
    """etcd3gw on one member, msgpack values; etcd3gw's Lock polled for locks."""

    role = "raw"

    def __init__(self, host: str, port: int, poll: float = LOCK_POLL) -> None:
        import etcd3gw

        self.client: Any = etcd3gw.Etcd3Client(host, port, api_path="/v3/")
        # As kvs.etcd configures its session: no proxy lookup in the environment
        # on every request (the default session's lookup costs about 0.3 ms a call,
        # which would flatter kvs).
        self.client.session.trust_env = False
        self.poll = poll
        self.label = (f"etcd3gw + msgpack; etcd3gw Lock, acquire() retried every "
                      f"{poll * 1e3:g} ms")

    def get(self, key: str) -> Any:
        return unpack(self.client.get(key)[0])

    def set(self, key: str, value: Any) -> None:
        self.client.put(key, pack(value))

    def _transaction(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        responses: list[dict[str, Any]] = []
        for start in range(0, len(requests), TXN_OPS):
            reply = self.client.transaction({"compare": [], "failure": [],
                                             "success": requests[start:start + TXN_OPS]})
            responses += reply.get("responses", [])
        return responses

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        from etcd3gw.utils import _decode, _encode

        responses = self._transaction([{"request_range": {"key": _encode(key)}}
                                       for key in keys])
        return [unpack(_decode(response["response_range"]["kvs"][0]["value"]))
                for response in responses]

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        from etcd3gw.utils import _encode

        self._transaction([{"request_put": {"key": _encode(key), "value": _encode(pack(value))}}
                           for key, value in mapping.items()])

    def locked_write(self, key: str, section: Section | None = None) -> None:
        lock = self.client.lock(key, ttl=LOCK_TIMEOUT)
        deadline = time.monotonic() + LOCK_WAIT
        while not lock.acquire():
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd3gw Lock on {key!r} not acquired in {LOCK_WAIT} s")
            time.sleep(self.poll)
        try:
            if section is not None:
                section.enter()
            stored = self.client.get(key)
            self.client.put(key, pack((unpack(stored[0]) if stored else 0) + 1))
            if section is not None:
                section.leave()
        finally:
            lock.release()

    update = locked_write

    def close(self) -> None:
        self.client.session.close()
