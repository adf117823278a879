"""PNG plots of the scaling runs (matplotlib, no display needed).

* ``value_size.png``: get and set latency against value size (log-log);
* ``workers.png``: throughput against the number of workers;
* ``store_size.png``: get and set cost as the store grows;
* ``ratios.png``: kvs/raw for every operation and backend, with the targets.

kvs is drawn solid, the raw client dashed, one colour per backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from benchmarks.report import RunResults, ratio
from benchmarks.scaling import Point
from benchmarks.targets import TARGETS

#: One colour per backend, by name: a backend added to BACKENDS must not shift the others'.
COLOURS = {"memory": "tab:green", "sqlite": "tab:blue", "redis": "tab:red",
           "redis_near": "tab:pink", "memcached": "tab:purple", "etcd": "tab:orange"}

#: How the plots name each side of a comparison and each operation.
ROLE_LABELS = {"kvs": "kvs", "raw": "raw client", "dogpile": "plain dogpile region"}
OPERATION_LABELS = {
    "get 100B": "get (100 B)", "get 10KB": "get (10 KB)",
    "set 100B": "set (100 B)", "set 10KB": "set (10 KB)",
    "get_multi 100": "get_multi (100 keys)", "set_multi 100": "set_multi (100 keys)",
    "update": "update()", "locked write": "locked write",
}


def _draw(axes: Axes, points: Sequence[Point], operation: str) -> None:
    """One line per backend and role for the series ending in ``operation``."""
    lines: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        role, _, op = point.series.partition(" ")
        if op == operation and point.error is None and math.isfinite(point.y):
            lines.setdefault((point.backend, role), []).append(point)
    for (backend, role), line in sorted(lines.items()):
        line.sort(key=lambda p: p.x)
        axes.plot([p.x for p in line], [p.y for p in line], marker="o", markersize=3,
                  linestyle="-" if role == "kvs" else "--",
                  color=COLOURS.get(backend, "black"),
                  label=f"{backend}: {ROLE_LABELS.get(role, role)}")
    axes.grid(True, which="both", alpha=0.3)
    if lines:
        axes.legend(fontsize=7, loc="best", framealpha=0.6)


def value_size(results: RunResults, path: Path) -> Path | None:
    if not results.value_size:
        return None
    figure, grid = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axes, operation in zip(grid, ("get", "set")):
        _draw(axes, results.value_size, operation)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("value size (bytes, msgpack)")
        axes.set_title(f"{operation} latency vs value size")
    grid[0].set_ylabel("µs per operation (median)")
    return _save(figure, path)


def store_size(results: RunResults, path: Path) -> Path | None:
    if not results.store_size:
        return None
    # Not shared: set costs more than get, and a shared axis would clip it.
    figure, grid = plt.subplots(1, 2, figsize=(11, 4.5))
    for axes, operation in zip(grid, ("get", "set")):
        _draw(axes, results.store_size, operation)
        axes.set_xscale("log")
        axes.set_ylim(bottom=0)
        axes.set_xlabel("keys in the store")
        axes.set_title(f"{operation} latency vs store size")
    grid[0].set_ylabel("µs per operation (median)")
    return _save(figure, path)


def workers(results: RunResults, path: Path) -> Path | None:
    if not results.workers:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    _draw(axes, results.workers, "get+set")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({p.x for p in results.workers}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_yscale("log")  # memory's raw dict is 100x the networked backends
    axes.set_xlabel("workers (processes; threads for memory)")
    axes.set_ylabel("operations per second (get + set)")
    axes.set_title("Throughput vs concurrency")
    return _save(figure, path)


def ratios(results: RunResults, path: Path) -> Path | None:
    """Grouped bars of kvs/raw per operation and backend, target bounds marked."""
    rows = [row for row in results.operations if ratio(row, "raw") is not None]
    if not rows:
        return None
    operations = list(dict.fromkeys(row.operation for row in rows))
    backends = list(dict.fromkeys(row.backend for row in rows))
    figure, axes = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(backends)
    for b_index, backend in enumerate(backends):
        for o_index, operation in enumerate(operations):
            row = next((r for r in rows if r.backend == backend and r.operation == operation),
                       None)
            value = None if row is None else ratio(row, "raw")
            if value is None:
                continue
            x = o_index + (b_index - (len(backends) - 1) / 2) * width
            axes.bar(x, value, width, color=COLOURS.get(backend, "grey"),
                     label=backend if o_index == 0 else None)
            for target in TARGETS:
                if (target.backend, target.operation, target.against) == (backend, operation,
                                                                            "raw"):
                    axes.hlines(target.limit, x - width / 2, x + width / 2, colors="black")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(range(len(operations)))
    axes.set_xticklabels([OPERATION_LABELS.get(op, op) for op in operations], rotation=20,
                         fontsize=8)
    axes.set_ylabel("kvs time / raw client time (log scale)")
    axes.set_title("Time of a kvs call relative to the raw client (black ticks: targets)")
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", which="both", alpha=0.3)
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(results: RunResults, directory: Path) -> list[Path]:
    """Every plot that has data, as PNG files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    made = [value_size(results, directory / "value_size.png"),
            workers(results, directory / "workers.png"),
            store_size(results, directory / "store_size.png"),
            ratios(results, directory / "ratios.png")]
    return [path for path in made if path is not None]
