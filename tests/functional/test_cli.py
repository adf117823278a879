"""The ``kvs`` command, driven as a subprocess against SQLite and a real Redis.

Each test writes its own ini file into a temporary directory (which is also
the working directory and ``HOME`` of the command, so no other config file can
be found).  Redis tests use the session's ACL server (a user with a password),
so every test there also checks that the password is never printed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.fixtures.redis import ACL_PASSWORD, ACL_USER

#: Generous bound for one command on a shared machine ("does not hang").
COMMAND_TIMEOUT = 60
SECRET_KEY = "S3cret-mac-key-do-not-print"
UNIX_PASSWORD = "unix-socket-pa55word"

STORES = """\
    [store:prices]
    {prices_backend}
    lock_timeout = 1.5
    endpoints = peaches, status

    [endpoint:prices.peaches]
    initial_value = 0.75
    calibration = 3*{{}}
    log_on_set = true
    schedule_interval = 30

    [endpoint:prices.status]
    initial_value = "CLOSE"
    calibration_map = CLOSE:on, OPEN:off

    [store:plain]
    {plain_backend}
    lock_timeout = 3
    secret_key = {secret_key}
    security_strategy = mac
"""


class Kvs:
    """Runs ``python -m kvs.cli`` (or ``module``) with one config file, in a sandbox
    directory."""

    def __init__(self, workdir: Path, config: Path | None, module: str = "kvs.cli") -> None:
        self.workdir = workdir
        self.config = config
        self.module = module
        self.env = {**os.environ, "HOME": str(workdir), "PYTHONUNBUFFERED": "1"}
        self.secrets = [SECRET_KEY, ACL_PASSWORD, UNIX_PASSWORD]

    def argv(self, *args: str) -> list[str]:
        config = ["--config-file", str(self.config)] if self.config is not None else []
        return [sys.executable, "-m", self.module, *config, *args]

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True,
                                cwd=self.workdir, env=self.env, input=input,
                                timeout=COMMAND_TIMEOUT)
        self.assert_no_secret(result.stdout + result.stderr)
        return result

    def json(self, *args: str, input: str | None = None) -> Any:
        result = self("--format", "json", *args, input=input)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, *args: str) -> Running:
        process = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=self.workdir,
                                   env=self.env)
        return Running(process, self)

    def assert_no_secret(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text


class Running:
    """A long-running command (lock, watch), its output read line by line."""

    def __init__(self, process: subprocess.Popen[str], kvs: Kvs) -> None:
        self.process = process
        self.kvs = kvs
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        for stream, lines in ((process.stdout, self.stdout), (process.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            lines.put(line.rstrip("\n"))

    def line(self, stream: str = "stdout", timeout: float = COMMAND_TIMEOUT) -> str:
        lines = self.stdout if stream == "stdout" else self.stderr
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no line on {stream} within {timeout} s") from None
        self.kvs.assert_no_secret(line)
        self.seen.append(line)
        return line

    def wait_for(self, text: str, stream: str = "stdout") -> str:
        while True:
            line = self.line(stream)
            if text in line:
                return line

    def finish(self) -> int:
        return self.process.wait(COMMAND_TIMEOUT)

    def rest(self, stream: str = "stderr") -> str:
        lines = self.stdout if stream == "stdout" else self.stderr
        collected = []
        while not lines.empty():
            collected.append(lines.get())
        text = "\n".join(collected)
        self.kvs.assert_no_secret(text)
        return text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(COMMAND_TIMEOUT)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Long-running commands of a test; killed if the test leaves them running."""
    started: list[Running] = []
    yield started
    for item in started:
        item.stop()


def write_config(directory: Path, text: str, name: str = "kvs.conf") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def stores_config(directory: Path, backend: str) -> Path:
    """Stores ``prices`` (declared endpoints) and ``plain`` over ``backend`` lines.

    ``{prefix}`` in ``backend`` becomes a per-store key prefix.
    """
    def lines(store: str) -> str:
        return backend.format(prefix=f"{uuid.uuid4().hex[:8]}-{store}").replace("\n", "\n    ")

    text = STORES.format(prices_backend=lines("prices"), plain_backend=lines("plain"),
                         secret_key=SECRET_KEY)
    return write_config(directory, text)


SQLITE_BACKEND = "backend = kvs.sqlite\nbackend_argument = filename:{filename}"


@pytest.fixture(params=["sqlite", "redis"])
def kvs(request: pytest.FixtureRequest, tmp_path: Path) -> Kvs:
    """The command over a fresh config of stores ``prices`` (declared) and ``plain``."""
    if request.param == "sqlite":
        backend = SQLITE_BACKEND.format(filename=tmp_path / "db.sqlite3")
    else:
        server = request.getfixturevalue("redis_acl_server")
        # Fresh key prefixes per test: the session's server is shared.
        backend = "\n".join([
            "backend = kvs.redis", "backend_argument = host:127.0.0.1",
            f"backend_argument = port:{server.port}",
            f"backend_argument = username:{ACL_USER}",
            f"backend_argument = password:{ACL_PASSWORD}",
            "key_prefix = {prefix}"])
    return Kvs(tmp_path, stores_config(tmp_path, backend))


@pytest.fixture
def sqlite_kvs(tmp_path: Path) -> Kvs:
    return Kvs(tmp_path, stores_config(tmp_path, SQLITE_BACKEND.format(
        filename=tmp_path / "db.sqlite3")))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: exactly one line, starting with ``kvs:``."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvs: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The stderr of a command failed under ``--format json``: one JSON object, whose
    ``status`` is the exit status."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    error = json.loads(lines[0], parse_constant=_no_constant)
    assert isinstance(error, dict) and isinstance(error["error"], str)
    assert error["status"] == result.returncode
    assert "Traceback" not in error["error"]
    return error


def _no_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# -- stores, get, set, delete ----------------------------------------------------

def test_stores_lists_backend_reachability_and_endpoints(kvs: Kvs) -> None:
    result = kvs("stores")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["store", "backend", "reachable", "endpoints"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    backend = rows["prices"][0]
    assert backend in ("kvs.sqlite", "kvs.redis")
    assert rows == {"plain": [backend, "yes", "0"], "prices": [backend, "yes", "2"]}
    data = kvs.json("stores")
    assert data == [
        {"store": "plain", "backend": backend, "reachable": True, "endpoints": 0},
        {"store": "prices", "backend": backend, "reachable": True, "endpoints": 2},
    ]


def test_set_get_delete_round_trip(kvs: Kvs) -> None:
    assert kvs("set", "plain", "basket", '{"peaches": [1, 2.5], "ok": true}').returncode == 0
    result = kvs("get", "plain", "basket")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"peaches": [1, 2.5], "ok": True}
    assert kvs.json("get", "plain", "basket") == {
        "store": "plain", "key": "basket", "value": {"peaches": [1, 2.5], "ok": True}}

    # Not JSON: stored as the text itself; a JSON string stays a string.
    assert kvs.json("set", "plain", "word", "hello world")["value"] == "hello world"
    assert kvs("get", "plain", "word").stdout == "hello world\n"
    assert kvs.json("set", "plain", "quoted", '"42"')["value"] == "42"
    assert kvs.json("get", "plain", "quoted")["value"] == "42"
    assert kvs.json("set", "plain", "number", "42")["value"] == 42

    deleted = kvs("delete", "plain", "basket")
    assert deleted.returncode == 0
    assert "deleted 'basket'" in deleted.stdout
    missing = kvs("get", "plain", "basket")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "key 'basket' not found in store 'plain'" in one_error_line(missing)
    again = kvs("--format", "json", "delete", "plain", "basket")
    assert again.returncode == 1
    assert again.stdout == ""
    assert json_error(again) == {"error": "key 'basket' not found in store 'plain'",
                                 "status": 1}


def test_set_with_ttl_expires(kvs: Kvs) -> None:
    data = kvs.json("set", "plain", "brief", "1", "--ttl", "0.5")
    assert data == {"store": "plain", "key": "brief", "value": 1, "ttl": 0.5}
    wait_until(lambda: kvs("get", "plain", "brief").returncode == 1)


def test_set_locked_writes_under_a_fenced_lease(kvs: Kvs) -> None:
    first = kvs.json("set", "plain", "counter", "1", "--locked")
    second = kvs.json("set", "plain", "counter", "2", "--locked")
    assert isinstance(first["fence"], int)
    assert second["fence"] > first["fence"]
    assert kvs.json("get", "plain", "counter")["value"] == 2
    text = kvs("set", "plain", "counter", "3", "--locked")
    assert text.returncode == 0
    assert "under lease fence" in text.stdout


def test_errors_are_one_line_with_documented_status(kvs: Kvs, tmp_path: Path) -> None:
    unknown = kvs("get", "nosuch", "key")
    assert unknown.returncode == 2
    assert "unknown store 'nosuch'" in one_error_line(unknown)
    assert "configured stores: plain, prices" in unknown.stderr

    usage = kvs("get", "plain")
    assert usage.returncode == 2
    assert len(usage.stderr.strip().splitlines()) == 1
    bad_ttl = kvs("set", "plain", "k", "1", "--ttl", "soon")
    assert bad_ttl.returncode == 2
    assert len(bad_ttl.stderr.strip().splitlines()) == 1

    missing = Kvs(tmp_path, tmp_path / "nothere.conf")("stores")
    assert missing.returncode == 2
    assert "config file not found" in one_error_line(missing)
    assert "nothere.conf" in missing.stderr

    debug = kvs("--debug", "get", "nosuch", "key")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("kvs: unknown store")


def test_help_lists_every_command(sqlite_kvs: Kvs) -> None:
    result = sqlite_kvs("--help")
    assert result.returncode == 0
    for name in ("stores", "get", "set", "delete", "lock", "unlock", "endpoints", "watch",
                 "check", "bench", "demo"):
        assert name in result.stdout
    sub = sqlite_kvs("set", "--help")
    assert sub.returncode == 0
    assert "--ttl" in sub.stdout and "--locked" in sub.stdout


def test_a_declared_store_that_is_down_does_not_stop_the_others(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:local]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'local.sqlite3'}

        [store:remote]
        backend = kvs.redis
        backend_argument = url:unix://{tmp_path / 'no.sock'}
        endpoints = level

        [endpoint:remote.level]
        initial_value = 1
        """)
    kvs = Kvs(tmp_path, config)
    assert kvs.json("stores") == [
        {"store": "local", "backend": "kvs.sqlite", "reachable": True, "endpoints": 0},
        {"store": "remote", "backend": "kvs.redis", "reachable": False, "endpoints": 1,
         "error": kvs.json("stores")[1]["error"]},
    ]
    assert kvs("set", "local", "k", "1").returncode == 0
    assert kvs.json("get", "local", "k")["value"] == 1
    down = kvs("endpoints", "remote")
    assert down.returncode == 3
    one_error_line(down)


def test_check_reports_endpoint_declaration_problems(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:local]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'local.sqlite3'}
        endpoints = level

        [endpoint:local.level]
        calibration = import os

        [endpoint:local.stray]
        initial_value = 1

        [endpoint:ghost.level]
        initial_value = 1
        """)
    result = Kvs(tmp_path, config)("check")
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 3, result.stderr
    assert any("[endpoint:local.level]" in line for line in problems)
    assert any("[endpoint:local.stray]" in line for line in problems)
    assert any("[endpoint:ghost.level]" in line for line in problems)


def test_check_section_problems_name_their_section(tmp_path: Path) -> None:
    config = write_config(tmp_path, """\
        [store:badarg]
        backend = kvs.sqlite
        backend_argument = colour:blue
        """)
    result = Kvs(tmp_path, config)("check")
    assert result.returncode == 1
    assert "[store:badarg]" in one_error_line(result)
    assert "colour" in result.stderr
    assert "blue" not in result.stderr


# -- lock and unlock -------------------------------------------------------------

def test_lock_holds_until_ctrl_c_and_blocks_others(kvs: Kvs, running: list[Running]) -> None:
    holder = kvs.start("--format", "json", "lock", "plain", "door")
    running.append(holder)
    acquired = json.loads(holder.line())
    assert acquired["event"] == "acquired"
    assert len(acquired["token"]) == 32
    assert isinstance(acquired["fence"], int)

    blocked = kvs("set", "plain", "door", "1", "--locked")
    assert blocked.returncode == 4
    assert "leased by another holder" in one_error_line(blocked)
    other = kvs("lock", "plain", "door", "--wait", "0.2")
    assert other.returncode == 4
    one_error_line(other)

    # unlock without --force shows the lease and refuses (status 4).
    shown = kvs("--format", "json", "unlock", "plain", "door")
    assert shown.returncode == 4
    assert json.loads(shown.stdout)["lease"]["token"] == acquired["token"]
    assert "--force" in json_error(shown)["error"]

    # The lease outlives its 3 s lock_timeout: the holder renews it.
    time.sleep(4.0)
    still = kvs("--format", "json", "unlock", "plain", "door")
    assert still.returncode == 4
    assert json.loads(still.stdout)["lease"]["token"] == acquired["token"]

    holder.process.send_signal(signal.SIGINT)
    assert holder.finish() == 0
    released = json.loads(holder.line())
    assert released == {"event": "released", "store": "plain", "key": "door",
                        "fence": acquired["fence"]}
    assert kvs.json("unlock", "plain", "door")["lease"] is None
    assert kvs("set", "plain", "door", "1", "--locked").returncode == 0


def test_lock_hold_ends_by_itself_and_on_sigterm(kvs: Kvs, running: list[Running]) -> None:
    done = kvs("lock", "plain", "gate", "--hold", "0.3")
    assert done.returncode == 0
    header, row, released = done.stdout.splitlines()
    assert header.split() == ["store", "key", "token", "fence", "hold"]
    assert row.split()[:2] == ["plain", "gate"]
    assert released.startswith("released lease fence")

    holder = kvs.start("lock", "plain", "gate", "--hold", "120")
    running.append(holder)
    holder.wait_for("plain")
    holder.process.send_signal(signal.SIGTERM)
    assert holder.finish() == 0
    assert kvs.json("unlock", "plain", "gate")["lease"] is None


def test_unlock_force_asks_then_breaks_the_lease(kvs: Kvs, running: list[Running]) -> None:
    holder = kvs.start("--format", "json", "lock", "plain", "vault")
    running.append(holder)
    fence = json.loads(holder.line())["fence"]

    declined = kvs("unlock", "plain", "vault", "--force", input="n\n")
    assert declined.returncode == 1
    assert "[y/N]" in declined.stderr
    assert "not confirmed" in declined.stderr.strip().splitlines()[-1]
    assert kvs("set", "plain", "vault", "1", "--locked").returncode == 4

    broken = kvs.json("unlock", "plain", "vault", "--force", input="y\n")
    assert broken["broken"] is True
    assert broken["lease"]["fence"] == fence
    # The holder notices at its next renewal that the lease is gone.
    assert holder.finish() == 4
    assert "lost" in holder.rest()
    assert kvs("set", "plain", "vault", "2", "--locked").returncode == 0

    holder = kvs.start("lock", "plain", "vault")
    running.append(holder)
    holder.wait_for("plain")
    forced = kvs("unlock", "plain", "vault", "--force", "--yes")
    assert forced.returncode == 0
    assert forced.stdout.startswith("broke lease fence")
    assert "[y/N]" not in forced.stderr
    assert holder.finish() == 4


# -- declared endpoints and watch --------------------------------------------------

def test_endpoints_show_values_calibration_lockout_and_logging(kvs: Kvs) -> None:
    result = kvs("endpoints", "prices")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["endpoint", "value_raw", "value_cal", "calibration", "locked",
                                "logging"]
    assert lines[1].split()[:5] == ["peaches", "0.75", "2.25", "3*{}", "no"]
    assert "every 30 s" in lines[1]
    assert lines[2].split()[:3] == ["status", "CLOSE", "on"]
    assert lines[2].endswith("off")

    data = kvs.json("endpoints", "prices")
    assert data["store"] == "prices" and data["locked"] is False
    peaches, status = data["endpoints"]
    assert peaches["value_raw"] == 0.75 and peaches["value_cal"] == 2.25
    assert peaches["lockout"] == {"locked": False}
    assert peaches["schedule_interval"] == 30 and peaches["logging"] is False
    assert status["value_cal"] == "on"

    none = kvs.json("endpoints", "plain")
    assert none["endpoints"] == []


def test_set_on_a_locked_out_endpoint_needs_its_key(kvs: Kvs) -> None:
    assert kvs.config is not None
    lockout = lock_endpoint(kvs, "peaches")
    shown = kvs.json("endpoints", "prices")["endpoints"][0]
    assert shown["lockout"]["locked"] is True
    assert "yes, by" in kvs("endpoints", "prices").stdout.splitlines()[1]

    refused = kvs("set", "prices", "peaches", "2")
    assert refused.returncode == 4
    one_error_line(refused)
    assert lockout not in refused.stderr
    assert kvs.json("get", "prices", "peaches")["value"] == 0.75
    done = kvs.json("set", "prices", "peaches", "2", "--lockout-key", lockout)
    assert done["endpoint"] is True
    assert kvs.json("get", "prices", "peaches")["value"] == 2


def lock_endpoint(kvs: Kvs, endpoint: str) -> str:
    """Lock out an endpoint from another process through the Python API; return the key."""
    script = textwrap.dedent(f"""
        import kvs, kvs.provider
        conf = kvs.load_config([{str(kvs.config)!r}])
        stores = kvs.configure_stores(conf)
        if not kvs.provider.registered_providers():
            kvs.provider.configure_providers(conf, stores)
        print(kvs.provider.get_provider("prices").endpoint({endpoint!r}).lock())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=kvs.workdir, timeout=COMMAND_TIMEOUT, check=True)
    return result.stdout.strip()


PUBLISHER = """
import sys, kvs, kvs.provider
conf = kvs.load_config([sys.argv[1]])
stores = kvs.configure_stores(conf)
if not kvs.provider.registered_providers():
    kvs.provider.configure_providers(conf, stores)
provider = kvs.provider.get_provider("prices")
for value in sys.argv[2:]:
    provider.set("peaches", float(value))
"""


def test_watch_prints_broadcasts_from_another_process(kvs: Kvs,
                                                      running: list[Running]) -> None:
    watcher = kvs.start("--format", "json", "watch", "prices", "--count", "3")
    running.append(watcher)
    watcher.wait_for("watching store 'prices'", stream="stderr")

    # A Python publisher in another process, then the kvs command itself.
    subprocess.run([sys.executable, "-c", PUBLISHER, str(kvs.config), "1.5", "2"],
                   check=True, cwd=kvs.workdir, timeout=COMMAND_TIMEOUT)
    assert kvs("set", "prices", "peaches", "4").returncode == 0

    events = [json.loads(watcher.line()) for _ in range(3)]
    assert watcher.finish() == 0
    assert [event["value_raw"] for event in events] == [1.5, 2, 4]
    assert [event["value_cal"] for event in events] == [4.5, 6, 12]
    assert {event["reason"] for event in events} == {"on_set"}
    assert {(event["store"], event["endpoint"]) for event in events} == {("prices", "peaches")}
    assert all(event["timestamp"].endswith("+00:00") for event in events)


def test_watch_table_filter_timeout_and_ctrl_c(kvs: Kvs, running: list[Running]) -> None:
    watcher = kvs.start("watch", "prices", "peaches")
    running.append(watcher)
    watcher.wait_for("(peaches)", stream="stderr")
    assert kvs("set", "prices", "peaches", "5").returncode == 0
    line = watcher.line()
    assert "prices.peaches" in line
    assert "value_raw=5" in line and "value_cal=15" in line and "reason=on_set" in line
    watcher.process.send_signal(signal.SIGINT)
    assert watcher.finish() == 0

    quiet = kvs("watch", "prices", "--timeout", "0.3")
    assert quiet.returncode == 0
    assert quiet.stdout == ""

    unknown = kvs("watch", "prices", "plums", "--timeout", "0.3")
    assert unknown.returncode == 1
    assert "plums" in one_error_line(unknown)
    undeclared = kvs("watch", "plain", "--timeout", "0.3")
    assert undeclared.returncode == 1
    assert "declares no endpoints" in one_error_line(undeclared)


def test_watch_sample_runs_scheduled_logging(kvs: Kvs) -> None:
    # A fresh store has no broadcast baseline: the first scheduled sample goes out.
    result = kvs("--format", "json", "watch", "prices", "peaches", "--sample", "--count", "1",
                 "--timeout", "30")
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert (event["endpoint"], event["value_raw"], event["value_cal"], event["reason"]) == \
        ("peaches", 0.75, 2.25, "first")


# -- check, bench, demo ------------------------------------------------------------

def test_check_passes_on_a_good_config(kvs: Kvs) -> None:
    result = kvs("check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["store", "backend", "status"]
    assert [row[0] for row in rows[1:]] == ["plain", "prices"]
    assert all(row[2] == "ok" for row in rows[1:])
    data = kvs.json("check")
    assert data["ok"] is True and data["problems"] == []
    assert data["config_files"] == [str(kvs.config)]


def test_check_reports_one_line_per_problem(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:good]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'good.sqlite3'}

        [store:typo]
        backend = kvs.nosuchbackend

        [store:gone]
        backend = kvs.redis
        backend_argument = url:unix://:{UNIX_PASSWORD}@{tmp_path / 'no.sock'}
        backend_argument = password:{UNIX_PASSWORD}
        secret_key = {SECRET_KEY}
        """)
    kvs = Kvs(tmp_path, config)
    result = kvs("check")
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 2, result.stderr
    assert any("[store:typo]" in line and "nosuchbackend" in line for line in problems)
    assert any("store 'gone'" in line and "no.sock" in line for line in problems)
    status = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()[1:]}
    assert status == {"gone": "FAILED", "good": "ok", "typo": "FAILED"}
    data = json.loads(kvs("--format", "json", "check").stdout)
    assert data["ok"] is False and len(data["problems"]) == 2

    unparsable = write_config(tmp_path, "[store:x\nbackend = kvs.sqlite\n", "broken.conf")
    broken = Kvs(tmp_path, unparsable)("check")
    assert broken.returncode == 1
    assert "cannot parse config file" in one_error_line(broken)

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = Kvs(empty, None)("check")
    assert nothing.returncode == 1
    assert "no config file found" in nothing.stderr


def test_bench_prints_a_table_and_json(kvs: Kvs) -> None:
    result = kvs("bench", "plain", "--count", "20", "--batch", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["operation", "calls", "µs/op", "ops/s"]
    assert [line.split()[0] for line in lines[1:5]] == ["set", "get", "get_multi", "update"]
    assert all(line.split()[1] == "20" for line in lines[1:5])
    data = kvs.json("bench", "plain", "--count", "10")
    assert [row["operation"] for row in data["results"]] == ["set", "get", "get_multi",
                                                            "update"]
    assert all(row["us_per_op"] > 0 and row["calls"] == 10 for row in data["results"])


def test_demo_runs_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:demo]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'demo.sqlite3'}
        backend_argument = busy_timeout:30
        lock_wait_timeout = 30
        """)
    data = Kvs(tmp_path, config).json("demo")
    assert data["ok"] is True
    assert data["final"] == data["expected"] == 1000
    assert any(line.startswith("final count  -> 1000") for line in data["output"])


def test_standard_search_path_reads_home_config_once(tmp_path: Path) -> None:
    # ~/kvs.conf is both oslo's <project>.conf and <prog>.conf: read it once
    # (twice would give backend_argument 'filename' twice, a config error).
    write_config(tmp_path, f"""\
        [store:home]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'home.sqlite3'}
        """)
    data = Kvs(tmp_path, None).json("check")
    assert data["config_files"] == [str(tmp_path / "kvs.conf")]
    assert data["ok"] is True


def test_standard_config_dir_is_read_once(tmp_path: Path) -> None:
    # ~/.kvs/kvs.conf.d is both oslo's <project>.conf.d and <prog>.conf.d.
    directory = tmp_path / ".kvs" / "kvs.conf.d"
    directory.mkdir(parents=True)
    write_config(directory, f"""\
        [store:fromdir]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'dir.sqlite3'}
        """, "a.conf")
    data = Kvs(tmp_path, None).json("check")
    assert data["ok"] is True
    assert data["config_files"] == [str(directory / "a.conf")]
    other = write_config(tmp_path, f"""\
        [store:fromfile]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'file.sqlite3'}
        """, "other.conf")
    rows = Kvs(tmp_path, other).json("stores")
    assert [row["store"] for row in rows] == ["fromdir", "fromfile"]


def test_checkout_config_is_used_without_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    write_config(tmp_path / "etc", f"""\
        [store:local]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'local.sqlite3'}
        """)
    data = Kvs(tmp_path, None).json("stores")
    assert [row["store"] for row in data] == ["local"]


# -- secrets -------------------------------------------------------------------------

def test_secrets_are_never_printed(tmp_path: Path) -> None:
    """Passwords in backend arguments and URLs, and secret_key, stay out of all output."""
    config = write_config(tmp_path, f"""\
        [store:remote]
        backend = kvs.redis
        backend_argument = url:unix://:{UNIX_PASSWORD}@{tmp_path / 'no.sock'}
        backend_argument = password:{UNIX_PASSWORD}
        secret_key = {SECRET_KEY}
        security_strategy = mac
        """)
    kvs = Kvs(tmp_path, config)  # every call asserts that no secret is printed
    for args in (["stores"], ["--format", "json", "stores"], ["check"],
                 ["--format", "json", "check"], ["--debug", "get", "remote", "k"],
                 ["set", "remote", "k", UNIX_PASSWORD[:4]], ["--debug", "unlock", "remote", "k"],
                 ["--debug", "bench", "remote", "--count", "1"]):
        result = kvs(*args)
        assert result.returncode in (0, 1, 3), (args, result.stderr)
    unreachable = kvs("get", "remote", "k")
    assert unreachable.returncode == 3
    assert "no.sock" in one_error_line(unreachable)


def test_wrong_redis_password_is_unavailable_and_not_printed(
        tmp_path: Path, redis_acl_server: Any) -> None:
    wrong = ACL_PASSWORD[::-1]
    config = write_config(tmp_path, f"""\
        [store:acl]
        backend = kvs.redis
        backend_argument = host:127.0.0.1
        backend_argument = port:{redis_acl_server.port}
        backend_argument = username:{ACL_USER}
        backend_argument = password:{wrong}
        """)
    kvs = Kvs(tmp_path, config)
    kvs.secrets.append(wrong)
    result = kvs("--debug", "get", "acl", "k")
    assert result.returncode == 3
    assert "authentication" in result.stderr.strip().splitlines()[-1]
    assert kvs.json("stores")[0]["reachable"] is False


# -- the command a person expects (issue 13, item 7) ---------------------------------

def test_python_m_kvs_runs_the_command(sqlite_kvs: Kvs) -> None:
    as_package = Kvs(sqlite_kvs.workdir, sqlite_kvs.config, module="kvs")
    result = as_package("stores")
    assert result.returncode == 0, result.stderr
    assert result.stdout == sqlite_kvs("stores").stdout
    assert result.stdout.splitlines()[0].split() == ["store", "backend", "reachable",
                                                     "endpoints"]
    usage = as_package("--help")
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: kvs ")


def test_version_prints_the_package_version(sqlite_kvs: Kvs, tmp_path: Path) -> None:
    import kvs as package

    for runner in (sqlite_kvs, Kvs(tmp_path, None), Kvs(tmp_path, None, module="kvs")):
        result = runner("--version")
        assert (result.returncode, result.stdout, result.stderr) == (
            0, f"kvs {package.__version__}\n", "")
    assert "--version" in sqlite_kvs("--help").stdout


def _help_of(result: subprocess.CompletedProcess[str], option: str) -> str:
    """The help text of ``option`` in ``kvs --help``, its lines joined."""
    assert result.returncode == 0, result.stderr
    text = result.stdout.split("\n  " + option + " ", 1)[1]
    text = text.split("\n  -", 1)[0]
    return " ".join(text.split())


def test_help_shows_the_config_files_actually_searched(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    config_file = _help_of(Kvs(bare, None)("--help"), "--config-file PATH")
    assert "etc/kvs.conf" in config_file
    for place in ("~/.kvs/kvs.conf", "~/kvs.conf", "/etc/kvs/kvs.conf", "/etc/kvs.conf"):
        assert place in config_file, config_file
    assert "found now: none" in config_file
    assert "Defaults to" not in config_file  # oslo's generic text is replaced
    config_dir = _help_of(Kvs(bare, None)("--help"), "--config-dir DIR")
    assert "~/.kvs/kvs.conf.d" in config_dir and "/etc/kvs/kvs.conf.d" in config_dir

    checkout = tmp_path / "checkout"
    (checkout / "etc").mkdir(parents=True)
    write_config(checkout / "etc", "[store:x]\nbackend = kvs.memory\n")
    shown = _help_of(Kvs(checkout, None)("--help"), "--config-file PATH")
    assert "found now: etc/kvs.conf" in shown


def test_configuration_errors_exit_2(sqlite_kvs: Kvs, tmp_path: Path) -> None:
    no_dir = sqlite_kvs("--config-dir", str(tmp_path / "nodir"), "stores")
    assert no_dir.returncode == 2
    line = one_error_line(no_dir)
    assert "config directory not found" in line and "nodir" in line
    assert "unexpected" not in line

    a_dir = Kvs(tmp_path, tmp_path)("stores")
    assert a_dir.returncode == 2
    line = one_error_line(a_dir)
    assert "is a directory" in line and str(tmp_path) in line
    assert "unexpected" not in line

    as_json = Kvs(tmp_path, tmp_path)("--format", "json", "get", "plain", "k")
    assert as_json.returncode == 2
    assert "is a directory" in json_error(as_json)["error"]

    # check reports a config that does not load as its problem: status 1.
    checked = sqlite_kvs("--config-dir", str(tmp_path / "nodir"), "check")
    assert checked.returncode == 1
    assert "config directory not found" in one_error_line(checked)


def test_errors_under_format_json_are_json(sqlite_kvs: Kvs) -> None:
    missing = sqlite_kvs("--format", "json", "get", "plain", "nope")
    assert missing.returncode == 1 and missing.stdout == ""
    assert json_error(missing) == {"error": "key 'nope' not found in store 'plain'",
                                   "status": 1}
    after = sqlite_kvs("get", "plain", "nope", "--format", "json")
    assert json_error(after)["status"] == 1

    unknown = sqlite_kvs("--format", "json", "get", "nosuch", "k")
    assert unknown.returncode == 2
    assert "unknown store 'nosuch'" in json_error(unknown)["error"]

    usage = sqlite_kvs("--format", "json", "get", "plain")
    assert usage.returncode == 2
    assert "required" in json_error(usage)["error"]

    debug = sqlite_kvs("--format", "json", "--debug", "get", "plain", "nope")
    assert debug.returncode == 1
    lines = debug.stderr.strip().splitlines()
    error = json.loads(lines[-1])
    assert error["status"] == 1 and "Traceback" in error["traceback"]
    assert all(json.loads(line) for line in lines)  # nothing but JSON on stderr


def test_json_output_never_holds_nan_or_infinity(sqlite_kvs: Kvs) -> None:
    script = textwrap.dedent(f"""
        import kvs
        conf = kvs.load_config([{str(sqlite_kvs.config)!r}])
        store = kvs.configure_stores(conf)["plain"]
        store.set("odd", {{"nan": float("nan"), "up": [float("inf")], "down": float("-inf"),
                          "fine": 1.5}})
        store.set("alone", float("inf"))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=sqlite_kvs.workdir,
                   timeout=COMMAND_TIMEOUT, env=sqlite_kvs.env)
    result = sqlite_kvs("--format", "json", "get", "plain", "odd")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout, parse_constant=_no_constant)
    assert data["value"] == {"nan": "NaN", "up": ["Infinity"], "down": "-Infinity", "fine": 1.5}
    text = sqlite_kvs("get", "plain", "alone")  # the text output of get is JSON too
    assert json.loads(text.stdout, parse_constant=_no_constant) == "Infinity"


def test_set_refuses_broken_json_unless_string(sqlite_kvs: Kvs) -> None:
    for broken in ("[1,2", '{"a": 1', '"unterminated', "01", "+1", ".5", "1e", "1_000",
                   " [1, NaN]"):
        refused = sqlite_kvs("set", "plain", "k", broken)
        assert refused.returncode == 2, broken
        line = one_error_line(refused)
        assert "--string" in line and "JSON" in line
    assert sqlite_kvs("get", "plain", "k").returncode == 1  # nothing was written

    assert sqlite_kvs.json("set", "plain", "k", "[1,2", "--string")["value"] == "[1,2"
    assert sqlite_kvs("get", "plain", "k").stdout == "[1,2\n"
    assert sqlite_kvs.json("set", "plain", "k", "42", "--string")["value"] == "42"
    # Plain words and JSON are as documented.
    for text, value in (("hello world", "hello world"), ("1.2.3", "1.2.3"), ("NaN", "NaN"),
                        ("2024-01-01", "2024-01-01"), ("-7.5", -7.5), ("[1, 2]", [1, 2]),
                        ('"01"', "01"), ("true", True)):
        assert sqlite_kvs.json("set", "plain", "k", text)["value"] == value, text
    # argparse takes -7.5e2 for an option; after -- it is VALUE.
    assert sqlite_kvs.json("set", "plain", "k", "--", "-7.5e2")["value"] == -750.0
    assert "--string" in sqlite_kvs("set", "--help").stdout


def test_stores_without_a_config_says_so_and_fails(tmp_path: Path) -> None:
    nothing = Kvs(tmp_path, None)("stores")
    assert nothing.returncode == 2
    assert nothing.stdout == ""
    line = one_error_line(nothing)
    assert "no config file found" in line and "--config-file" in line

    empty = write_config(tmp_path, "[kvs]\n", "empty.conf")
    no_store = Kvs(tmp_path, empty)("--format", "json", "stores")
    assert no_store.returncode == 2 and no_store.stdout == ""
    assert "no [store:NAME] section" in json_error(no_store)["error"]


INTERNAL_NAMES = ("get_serialized", "plain_set", "plain_delete", "fenced_set", "fenced_delete",
                  "acquire_lease", "release_lease", "extend_lease", "break_lease",
                  "lease_info", "persist_lease", "wait_for_release", "delete_multi",
                  "_connect")


def test_messages_never_name_internal_methods(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:remote]
        backend = kvs.redis
        backend_argument = url:unix://{tmp_path / 'no.sock'}
        """)
    kvs = Kvs(tmp_path, config)
    cases = ((["get", "remote", "k"], "(get:"), (["set", "remote", "k", "1"], "(set:"),
             (["set", "remote", "k", "1", "--locked"], "(lock:"),
             (["lock", "remote", "k"], "(lock:"), (["unlock", "remote", "k"], "(lease info:"),
             (["delete", "remote", "k"], "(delete:"),
             (["--format", "json", "stores"], "(ping:"), (["check"], "(ping:"))
    for args, word in cases:
        result = kvs(*args)
        assert result.returncode in (0, 1, 3), (args, result.stderr)
        text = result.stdout + result.stderr
        assert "unreachable" in text, (args, text)
        assert word in text, (args, text)
        for name in INTERNAL_NAMES:
            assert name not in text, (args, name, text)


def test_check_fails_a_store_with_a_bad_declared_store_option(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:good]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'good.sqlite3'}

        [store:x]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'x.sqlite3'}
        event_log_size = abc
        """)
    kvs = Kvs(tmp_path, config)
    result = kvs("check")
    assert result.returncode == 1
    status = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()[1:]}
    assert status == {"good": "ok", "x": "FAILED"}
    line = one_error_line(result)
    assert "[store:x]" in line and "event_log_size" in line
    data = json.loads(kvs("--format", "json", "check").stdout)
    assert data["ok"] is False
    assert [row["ok"] for row in data["stores"]] == [True, False]


def test_a_broken_store_section_does_not_stop_the_healthy_stores(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        [store:bad]
        backend = kvs.sqlite
        lock_timeout = abc

        [store:good]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'good.sqlite3'}
        """)
    kvs = Kvs(tmp_path, config)
    done = kvs("set", "good", "k", '{"a": 1}')
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert kvs.json("get", "good", "k")["value"] == {"a": 1}
    assert kvs("set", "good", "c", "1", "--locked").returncode == 0
    assert kvs("delete", "good", "k").returncode == 0

    broken = kvs("get", "bad", "k")
    assert broken.returncode == 2
    line = one_error_line(broken)
    assert "[store:bad]" in line and "lock_timeout" in line

    rows = kvs.json("stores")
    assert [(row["store"], row["reachable"]) for row in rows] == [("bad", False),
                                                                  ("good", True)]
    assert "lock_timeout" in rows[0]["error"]
    listed = kvs("stores")
    assert listed.returncode == 0
    assert "[store:bad]" in one_error_line(listed)
