"""Commands that check and exercise stores: check, bench, demo."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from kvs import conf as kvs_conf
from kvs import exception, loader
from kvs.cli.data import ping
from kvs.cli.output import table, to_json
from kvs.cli.session import EXIT_FAILED, EXIT_OK, Session, configure_store

#: Keys ``kvs bench`` writes (and deletes afterwards).
BENCH_PREFIX = "_bench:"


def check(session: Session) -> tuple[list[dict[str, Any]], list[str]]:
    """Configure each store on its own and ping it; ``(rows, problems)``."""
    conf = session.conf
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    names = loader.store_names(conf)
    if not session.config_files:
        problems.append("no config file found (give --config-file)")
    elif not names:
        problems.append(f"no [store:NAME] section in {', '.join(session.config_files)}")
    try:
        loader.register_extra_backends(conf)
    except exception.KVSError as error:
        problems.append(error.message)
    for name in names:
        row: dict[str, Any] = {"store": name, "backend": None, "ok": False, "problem": None}
        rows.append(row)
        group = kvs_conf.STORE_GROUP_PREFIX + name
        # Exactly what loading checks, one store at a time: one broken section
        # does not hide the others, and every problem of a section is listed.
        found = loader.store_problems(conf, name)
        if not any(error.context.get("option") == "backend" for error in found):
            row["backend"] = conf[group].backend
        if found:
            row["problems"] = [error.message for error in found]
            continue
        try:
            store = configure_store(conf, name)
        except exception.KVSError as error:
            where = "" if error.context.get("section") else f"[{group}] "
            row["problem"] = f"{where}{error.message}"
            continue
        problem = ping(store)
        if problem is not None:
            row["problem"] = f"store {name!r}: {problem}"
        else:
            row["ok"] = True
    for row in rows:
        listed = row.pop("problems", None) or ([row["problem"]] if row["problem"] else [])
        row["problem"] = "; ".join(listed) or None
        problems += listed
    problems += orphan_endpoint_sections(conf)
    return rows, [session.scrub(problem) for problem in problems]


def orphan_endpoint_sections(conf: cfg.ConfigOpts) -> list[str]:
    """``[endpoint:S.E]`` sections whose store ``S`` has no ``[store:S]`` section (each
    store's own endpoint sections are checked by :func:`kvs.loader.store_problems`)."""
    from kvs.provider import options as provider_options

    known = loader.store_names(conf)
    problems = []
    for section in conf.list_all_sections():
        address = section.partition(provider_options.ENDPOINT_GROUP_PREFIX)[2]
        if section.startswith(provider_options.ENDPOINT_GROUP_PREFIX) and not any(
                address.startswith(name + ".") for name in known):
            problems.append(f"section [{section}] belongs to no [store:NAME] section")
    return problems


def cmd_check(session: Session) -> int:
    rows, problems = check(session)
    session.emit(
        {"ok": not problems, "config_files": session.config_files,
         "stores": [{**row, "problem": row["problem"] and session.scrub(row["problem"])}
                    for row in rows], "problems": problems},
        table(["store", "backend", "status"],
              [[row["store"], row["backend"], "ok" if row["ok"] else "FAILED"]
               for row in rows]))
    if not session.json:  # the JSON lists them in "problems"
        for problem in problems:
            session.note(f"kvs: {problem}")
    return EXIT_FAILED if problems else EXIT_OK


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, or a stand-in when tqdm is missing or output is JSON."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        class Silent:
            def update(self, n: int) -> None:
                pass

            def set_description(self, text: str) -> None:
                pass

            def close(self) -> None:
                pass
        return Silent()
    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests).
    return tqdm(total=total, unit="op", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None)


def cmd_bench(session: Session) -> int:
    name, count, batch = session.arg("store"), session.arg("count"), session.arg("batch")
    store = session.store(name)
    prefix = f"{BENCH_PREFIX}{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{index}" for index in range(max(batch, 100))]
    counter = f"{prefix}counter"
    operations: list[tuple[str, Callable[[int], Any]]] = [
        ("set", lambda i: store.set(keys[i % len(keys)], i)),
        ("get", lambda i: store.get(keys[i % len(keys)])),
        ("get_multi", lambda i: store.get_multi(
            [keys[(i + j) % len(keys)] for j in range(batch)])),
        ("update", lambda i: store.update(counter, lambda n: n + 1, default=0)),
    ]
    store.set_multi({key: 0 for key in keys})  # every get finds its key from the start
    bar = _progress(count * len(operations), enabled=not session.json)
    results = []
    try:
        for label, operation in operations:
            bar.set_description(label)
            elapsed = 0.0
            for start in range(0, count, 100):
                chunk = range(start, min(start + 100, count))
                began = time.perf_counter()
                for i in chunk:
                    operation(i)
                elapsed += time.perf_counter() - began
                bar.update(len(chunk))
            results.append({"operation": label, "calls": count,
                            "us_per_op": round(elapsed / count * 1e6, 2),
                            "ops_per_s": round(count / elapsed, 1) if elapsed > 0 else None})
    finally:
        bar.close()
        store.delete_multi([*keys, counter])
    text = table(["operation", "calls", "µs/op", "ops/s"],
                 [[row["operation"], row["calls"], f"{row['us_per_op']:.1f}",
                   f"{row['ops_per_s']:.0f}" if row["ops_per_s"] else "-"] for row in results])
    text += f"\nstore {name!r}, backend {store.backend_name}, get_multi of {batch} keys"
    session.emit({"store": name, "backend": store.backend_name, "batch": batch,
                  "results": results}, text)
    return EXIT_OK


def cmd_demo(session: Session) -> int:
    from kvs import demo

    name = session.arg("store")
    session.store(name)
    files = session.config_files
    if not files:
        raise exception.ConfigurationError(
            "the demo needs a config file (give --config-file)", option="config_file")
    lines: list[str] = []

    def write(text: str) -> None:
        if session.json:
            lines.append(text)
        else:
            session.write(text)

    final = demo.run(files, name, write=write)
    expected = demo.WORKERS * demo.INCREMENTS
    if session.json:
        session.write(to_json({"store": name, "final": final, "expected": expected,
                               "ok": final == expected, "output": lines}))
    return EXIT_OK if final == expected else EXIT_FAILED
