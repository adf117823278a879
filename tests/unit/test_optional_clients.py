"""redis-py, pymemcache, etcd3gw and cryptography are optional: without them kvs imports, sqlite and
memory work silently, and configuring a backend (or ``security_strategy = encrypt``) that needs
one names the extra to install, as a ``pip install 'dogpile-kvs[EXTRA]'`` line.

Each case runs in a subprocess whose import system refuses the client libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = '''
import sys

class _RefuseClients:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("redis", "pymemcache", "hiredis", "etcd3gw", "cryptography"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _RefuseClients())
'''

PROBE = '''
import json, logging, os, sys

errors = []

class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            errors.append(f"{record.name}: {record.getMessage()}")

logging.getLogger().addHandler(Collect())
import kvs
from kvs import exception

results = {}
store = kvs.get_key_value_store("plain")
store.configure("kvs.sqlite", filename=os.path.join(sys.argv[1], "s.sqlite3"))
store.set("k", 1)
memory = kvs.get_key_value_store("mem")
memory.configure("kvs.memory")
memory.set("k", 2)
results["embedded"] = [store.get("k"), memory.get("k")]
signed = kvs.get_key_value_store("signed")  # mac needs only the standard library
signed.configure("kvs.memory", security_strategy="mac", secret_key="s" * 32)
signed.set("k", 3)
results["mac"] = signed.get("k")
try:
    kvs.get_key_value_store("sealed").configure(
        "kvs.memory", security_strategy="encrypt", secret_key="s" * 32)
    results["encrypt"] = "configured"
except exception.ConfigurationError as exc:
    results["encrypt"] = str(exc)
results["errors_logged"] = list(errors)
# Closed loopback ports: nothing is ever sent (the configure must fail first).
cases = {
    "kvs.redis": {"url": "redis://127.0.0.1:9"},
    "kvs.redis_cluster": {"startup_nodes": ["127.0.0.1:9"]},
    "kvs.redis_sentinel": {"sentinels": ["127.0.0.1:9"], "service_name": "m"},
    "kvs.memcached": {"servers": ["127.0.0.1:9"]},
    "kvs.etcd": {"endpoints": ["127.0.0.1:9"]},
    "dogpile.cache.redis": {"host": "127.0.0.1", "port": 9},
}
for backend, arguments in cases.items():
    target = kvs.get_key_value_store("x-" + backend)
    try:
        target.configure(backend, **arguments)
        results[backend] = "configured"
    except exception.ConfigurationError as exc:
        results[backend] = str(exc)
    except Exception as exc:
        results[backend] = f"foreign {type(exc).__name__}: {exc}"
print(json.dumps(results))
'''


def test_without_client_libraries(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(Path(__file__).resolve().parents[2])])}
    done = subprocess.run([sys.executable, str(probe), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["embedded"] == [1, 2]
    assert results["errors_logged"] == []
    for backend, package, extra in (("kvs.redis", "redis", "redis"),
                                    ("kvs.redis_cluster", "redis", "redis"),
                                    ("kvs.redis_sentinel", "redis", "redis"),
                                    ("kvs.memcached", "pymemcache", "memcached"),
                                    ("kvs.etcd", "etcd3gw", "etcd")):
        message = results[backend]
        assert f"needs the Python package {package!r}" in message, (backend, message)
        assert f"pip install 'dogpile-kvs[{extra}]'" in message, (backend, message)
        assert "kvs[" not in message.replace("dogpile-kvs[", ""), (backend, message)
    assert "needs the Python package 'redis'" in results["dogpile.cache.redis"]
    assert results["mac"] == 3
    assert "needs the 'cryptography' package" in results["encrypt"], results["encrypt"]
    assert "pip install 'dogpile-kvs[security]'" in results["encrypt"], results["encrypt"]
