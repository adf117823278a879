"""Ratios, met/MISSED checks, and the outputs: terminal table, JSON, markdown.

Everything here works on :class:`RunResults` alone (no servers, no timing),
so the unit test can feed it a small synthetic result.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.contention import ContentionResult, paired_speedup
from benchmarks.scaling import Point
from benchmarks.suites import OperationResult
from benchmarks.targets import (
    KVS_UPDATE_VARIANT,
    RAW_SQLITE_VARIANT,
    SQLITE_CONTENTION_SHARE,
    SQLITE_CONTENTION_SOURCE,
    STORE_SIZE_FLATNESS,
    STORE_SIZE_SOURCE,
    TARGETS,
    Target,
)
from benchmarks.timing import paired_ratio

MET = "met"
MISSED = "MISSED"
NOT_AVAILABLE = "not available"


@dataclasses.dataclass
class Check:
    """One target, checked."""

    backend: str
    metric: str
    bound: str
    ratio: float | None
    status: str  # met | MISSED | not available
    source: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunResults:
    """Everything one run measured, plus machine info."""

    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: backend -> {"available": bool, "reason": str | None, "subjects": {role: label}}
    backends: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    operations: list[OperationResult] = dataclasses.field(default_factory=list)
    contention: list[ContentionResult] = dataclasses.field(default_factory=list)
    store_size: list[Point] = dataclasses.field(default_factory=list)
    value_size: list[Point] = dataclasses.field(default_factory=list)
    workers: list[Point] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "backends": self.backends,
            "operations": [row.to_json() for row in self.operations],
            "contention": [row.to_json() for row in self.contention],
            "scaling": {
                "store_size": [point.to_json() for point in self.store_size],
                "value_size": [point.to_json() for point in self.value_size],
                "workers": [point.to_json() for point in self.workers],
            },
            "checks": [check.to_json() for check in evaluate(self)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        scaling = data.get("scaling", {})
        return cls(
            meta=dict(data.get("meta", {})),
            backends=dict(data.get("backends", {})),
            operations=[OperationResult.from_json(row) for row in data.get("operations", [])],
            contention=[ContentionResult.from_json(row) for row in data.get("contention", [])],
            store_size=[Point.from_json(p) for p in scaling.get("store_size", [])],
            value_size=[Point.from_json(p) for p in scaling.get("value_size", [])],
            workers=[Point.from_json(p) for p in scaling.get("workers", [])],
        )


# -- ratios and checks ---------------------------------------------------------


def ratio(row: OperationResult, against: str) -> float | None:
    """kvs time / baseline time for one row (paired by round); None when either is missing."""
    kvs, base = row.stats.get("kvs"), row.stats.get(against)
    if kvs is None or base is None or base.median_us <= 0:
        return None
    return paired_ratio(kvs, base)


def _find(results: RunResults, backend: str, operation: str) -> OperationResult | None:
    for row in results.operations:
        if row.backend == backend and row.operation == operation:
            return row
    return None


def _check_target(results: RunResults, target: Target) -> Check:
    metric = f"{target.operation}: kvs/{target.against}"
    row = _find(results, target.backend, target.operation)
    value = None if row is None else ratio(row, target.against)
    if value is None:
        info = results.backends.get(target.backend, {})
        reason = info.get("reason") or (
            row.missing.get("kvs") or row.missing.get(target.against) if row else None)
        return Check(target.backend, metric, target.bound, None, NOT_AVAILABLE, target.source,
                     reason or "not measured in this run")
    status = MET if target.met(value) else MISSED
    return Check(target.backend, metric, target.bound, value, status, target.source,
                 target.note)


def _growth(points: list[Point]) -> tuple[float, str] | None:
    """Cost at the largest size over the smallest, and how it was computed."""
    points = sorted(points, key=lambda p: p.x)
    small, large = points[0], points[-1]
    if len(points) < 2 or small.y <= 0:
        return None
    if large.relative is not None and small.relative is not None and small.relative > 0:
        return large.relative / small.relative, "paired with a reference store of the smallest size"
    return large.y / small.y, "ratio of medians"


def _flatness_checks(results: RunResults) -> list[Check]:
    """kvs at the largest store size against the smallest; the raw client's growth,
    measured alongside, is given in the detail so storage effects can be told apart."""
    checks = []
    series: dict[tuple[str, str], list[Point]] = {}
    for point in results.store_size:
        if point.error is None and math.isfinite(point.y):
            series.setdefault((point.backend, point.series), []).append(point)
    for (backend, name), points in sorted(series.items()):
        if not name.startswith("kvs "):
            continue
        growth = _growth(points)
        if growth is None:
            continue
        value, how = growth
        points.sort(key=lambda p: p.x)
        small, large = points[0], points[-1]
        detail = f"{small.y:.1f} -> {large.y:.1f} µs/op; {how}"
        raw = series.get((backend, "raw " + name[len("kvs "):]))
        raw_growth = _growth(raw) if raw else None
        if raw_growth is not None:
            detail += f"; the raw client grows {raw_growth[0]:.2f}x over the same sizes"
        status = MET if value <= STORE_SIZE_FLATNESS else MISSED
        checks.append(Check(backend, f"{name} at {_keys(large.x)} keys",
                            f"<= {STORE_SIZE_FLATNESS:.2f}x at {_keys(small.x)}", value, status,
                            STORE_SIZE_SOURCE, detail))
    return checks


def _paired(result: ContentionResult) -> str:
    rounds = len(result.round_rates)
    return f" (ratio: median of {rounds} alternating rounds)" if rounds > 1 else ""


def _contention_checks(results: RunResults) -> list[Check]:
    """sqlite: kvs update()'s throughput over the raw transaction loop's, nothing lost."""
    rows = {r.variant: r for r in results.contention if r.backend == "sqlite"}
    kvs, raw = rows.get(KVS_UPDATE_VARIANT), rows.get(RAW_SQLITE_VARIANT)
    if kvs is None and raw is None:
        return []
    metric = "contention: update() updates/s over raw"
    bound = f">= {SQLITE_CONTENTION_SHARE:.2f}x raw, 0 lost"
    broken = [r for r in (kvs, raw) if r is None or r.error or r.updates_per_s <= 0]
    if broken:
        reason = "; ".join(f"{r.variant}: {r.error}" for r in broken if r is not None and r.error)
        return [Check("sqlite", metric, bound, None, NOT_AVAILABLE, SQLITE_CONTENTION_SOURCE,
                      reason or "not measured in this run")]
    assert kvs is not None and raw is not None
    share = paired_speedup(kvs, raw)
    lost = [r.lost_updates for r in (kvs, raw)]
    met = share >= SQLITE_CONTENTION_SHARE and all(n == 0 for n in lost)
    detail = (f"{kvs.workers} {kvs.mode}: {kvs.updates_per_s:,.0f} vs "
              f"{raw.updates_per_s:,.0f} updates/s{_paired(kvs)}; lost {lost[0]} (kvs), "
              f"{lost[1]} (raw)")
    return [Check("sqlite", metric, bound, share, MET if met else MISSED,
                  SQLITE_CONTENTION_SOURCE, detail)]


#: Issue 16, target 1: 8 processes running update() on one Redis key.
REDIS_HANDOFF_SOURCE = "issue 16 (contended hand-off)"
REDIS_HANDOFF_SPEEDUP = 2.0
REDIS_HANDOFF_SHARE = 0.5
REDIS_HANDOFF_P99_US = 2000.0
REDIS_LOCK_VARIANT = "redis-py Lock (sleep=0.1 s, default)"


def _redis_handoff_checks(results: RunResults) -> list[Check]:
    """redis: kvs update() against redis-py's Lock at its defaults, in the same run:
    throughput, the share of sections handed to another worker, hand-off p99."""
    rows = {r.variant: r for r in results.contention if r.backend == "redis"}
    kvs, lock = rows.get(KVS_UPDATE_VARIANT), rows.get(REDIS_LOCK_VARIANT)
    if kvs is None and lock is None:
        return []
    metrics = [("contention: update() updates/s over redis-py Lock",
                f">= {REDIS_HANDOFF_SPEEDUP:.2f}x, 0 lost, 0 overlaps"),
               ("contention: update() sections handed to another worker",
                f">= {REDIS_HANDOFF_SHARE:.0%}"),
               ("contention: update() hand-off p99 µs", f"< {REDIS_HANDOFF_P99_US:,.0f} µs")]
    broken = [r for r in (kvs, lock) if r is None or r.error or r.updates_per_s <= 0]
    if broken:
        reason = "; ".join(f"{r.variant}: {r.error}" for r in broken if r is not None and r.error)
        return [Check("redis", metric, bound, None, NOT_AVAILABLE, REDIS_HANDOFF_SOURCE,
                      reason or "not measured in this run") for metric, bound in metrics]
    assert kvs is not None and lock is not None
    speedup = paired_speedup(kvs, lock)
    clean = kvs.lost_updates == 0 and kvs.overlaps == 0
    share = kvs.handoffs / max(1, kvs.updates - 1)
    p99 = kvs.handoff_p99_us
    detail = (f"{kvs.workers} {kvs.mode}: {kvs.updates_per_s:,.0f} vs "
              f"{lock.updates_per_s:,.0f} updates/s{_paired(kvs)}; lost {kvs.lost_updates}, "
              f"overlaps {kvs.overlaps}")
    return [
        Check("redis", metrics[0][0], metrics[0][1], speedup,
              MET if speedup >= REDIS_HANDOFF_SPEEDUP and clean else MISSED,
              REDIS_HANDOFF_SOURCE, detail),
        Check("redis", metrics[1][0], metrics[1][1], share,
              MET if share >= REDIS_HANDOFF_SHARE else MISSED, REDIS_HANDOFF_SOURCE,
              f"{kvs.handoffs:,} of {kvs.updates:,} sections"),
        Check("redis", metrics[2][0], metrics[2][1], p99,
              NOT_AVAILABLE if p99 is None else
              (MET if p99 < REDIS_HANDOFF_P99_US else MISSED), REDIS_HANDOFF_SOURCE,
              f"p50 {kvs.handoff_p50_us or 0:,.0f} µs"),
    ]


def evaluate(results: RunResults) -> list[Check]:
    """Every target checked: met, MISSED, or not available (with the reason)."""
    wanted = set(results.backends) if results.backends else None
    # A run without the ops phase (--phases) has no rows to check, only nothing to say.
    checks = [_check_target(results, target) for target in TARGETS
              if results.operations and (wanted is None or target.backend in wanted)]
    return (checks + _contention_checks(results) + _redis_handoff_checks(results)
            + _flatness_checks(results))


# -- formatting ----------------------------------------------------------------


def _keys(count: float) -> str:
    count = int(count)
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def _us(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _row_status(row: OperationResult, checks: Sequence[Check]) -> str:
    mine = [c for c in checks if c.backend == row.backend
            and c.metric.split(":")[0] == row.operation]
    return ", ".join(c.status for c in mine) if mine else ""


def operation_rows(results: RunResults, checks: Sequence[Check], ranges: bool
                   ) -> list[list[str]]:
    """The main table as text cells (header first)."""
    header = ["backend", "operation", "kvs µs", "raw µs", "dogpile µs", "kvs/raw",
              "kvs/dogpile", "target"]
    rows = [header]
    for row in results.operations:
        kvs = row.stats.get("kvs")
        if kvs is None:
            rows.append([row.backend, row.operation, NOT_AVAILABLE, "", "", "", "", ""])
            continue
        cells = [row.backend, row.operation]
        for role in ("kvs", "raw", "dogpile"):
            stat = row.stats.get(role)
            if stat is None:
                cells.append("n/a")
            elif ranges:
                cells.append(f"{_us(stat.median_us)} ({_us(stat.min_us)}-{_us(stat.max_us)})")
            else:
                cells.append(_us(stat.median_us))
        cells += [_x(ratio(row, "raw")), _x(ratio(row, "dogpile")), _row_status(row, checks)]
        rows.append(cells)
    return rows


def contention_rows(results: RunResults) -> list[list[str]]:
    header = ["backend", "variant", "workers", "updates/s", "handed over", "hand-off p50 µs",
              "hand-off p99 µs", "vs redis-py Lock", "lost", "overlaps"]
    reference = next((r for r in results.contention
                      if r.variant.startswith("redis-py Lock (sleep=0.1") and not r.error), None)
    rows = [header]
    for r in results.contention:
        if r.error:
            rows.append([r.backend, r.variant, str(r.workers), f"error: {r.error}", "", "", "",
                         "", "", ""])
            continue
        versus = (f"{r.updates_per_s / reference.updates_per_s:.1f}x"
                  if reference and reference.updates_per_s > 0 else "-")
        # Share of sections that went to another worker: a lock whose holder
        # re-takes it at once shows high updates/s while the others starve.
        share = f"{100 * r.handoffs / r.updates:.0f}%" if r.updates else "-"
        rows.append([r.backend, r.variant, f"{r.workers} {r.mode}", f"{r.updates_per_s:,.0f}",
                     share, _us(r.handoff_p50_us), _us(r.handoff_p99_us), versus,
                     str(r.lost_updates), str(r.overlaps)])
    return rows


def check_rows(checks: Iterable[Check]) -> list[list[str]]:
    rows = [["backend", "metric", "bound", "ratio", "status", "source", "detail"]]
    for c in checks:
        # Three decimals: 1.103x must not print as a "1.10x" next to MISSED.
        if c.ratio is None:
            shown = "-"
        elif c.bound.endswith("µs"):
            shown = f"{c.ratio:,.0f} µs"
        elif c.bound.endswith("%"):
            shown = f"{c.ratio:.1%}"
        else:
            shown = f"{c.ratio:.3f}x"
        rows.append([c.backend, c.metric, c.bound, shown,
                     c.status if c.status != NOT_AVAILABLE else f"{c.status}: {c.detail}",
                     c.source, c.detail if c.status != NOT_AVAILABLE else ""])
    return rows


def scaling_rows(points: Sequence[Point], unit: str) -> list[list[str]]:
    """A pivot: one row per backend and series, one column per x."""
    xs = sorted({p.x for p in points})
    rows = [["backend", "series", *(_keys(x) if unit != "workers" else str(int(x))
                                    for x in xs)]]
    table: dict[tuple[str, str], dict[float, Point]] = {}
    for point in points:
        table.setdefault((point.backend, point.series), {})[point.x] = point
    for (backend, series), by_x in table.items():
        cells = []
        for x in xs:
            found = by_x.get(x)
            if found is None:
                cells.append("")
            elif found.error:
                cells.append("error")
            else:
                cells.append(f"{found.y:,.0f}" if unit == "workers" else _us(found.y))
        rows.append([backend, series, *cells])
    return rows


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text columns."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])),
                      *(line(row) for row in rows[1:])])


def _unavailable_lines(results: RunResults) -> list[str]:
    return [f"{name}: not available ({info.get('reason')})"
            for name, info in results.backends.items() if not info.get("available", True)]


def terminal_report(results: RunResults) -> str:
    checks = evaluate(results)
    parts = ["Operations (µs per op: median of rounds; ratios: median of same-round ratios)",
             text_table(operation_rows(results, checks, ranges=False))]
    parts += _unavailable_lines(results)
    if results.contention:
        parts += ["", "Contention (one counter, lock hand-off)",
                  text_table(contention_rows(results))]
    if results.store_size:
        parts += ["", "Cost vs store size (µs/op)",
                  text_table(scaling_rows(results.store_size, "keys"))]
    if results.value_size:
        parts += ["", "Cost vs value size (µs/op)",
                  text_table(scaling_rows(results.value_size, "bytes"))]
    if results.workers:
        parts += ["", "Throughput vs workers (ops/s)",
                  text_table(scaling_rows(results.workers, "workers"))]
    missed = sum(1 for c in checks if c.status == MISSED)
    unknown = sum(1 for c in checks if c.status == NOT_AVAILABLE)
    parts += ["", f"Targets: {len(checks) - missed - unknown} met, {missed} MISSED, "
                  f"{unknown} not available", text_table(check_rows(checks))]
    return "\n".join(parts)


def markdown_report(results: RunResults) -> str:
    checks = evaluate(results)
    meta = results.meta
    missed = sum(1 for c in checks if c.status == MISSED)
    unknown = sum(1 for c in checks if c.status == NOT_AVAILABLE)
    lines = [
        "# kvs benchmark results",
        "",
        f"Command: `{meta.get('command', 'python -m benchmarks')}`, "
        f"{meta.get('mode', '?')} mode, {meta.get('started', '?')}, "
        f"{meta.get('wall_seconds', 0):.0f} s.  Machine: {meta.get('cpu', '?')}, "
        f"{meta.get('cpus', '?')} CPUs, load average {meta.get('load_before', '?')} before "
        f"and {meta.get('load_after', '?')} after.  Python {meta.get('python', '?')}.",
        "",
        "µs per operation: median of the rounds, with (min-max) over rounds.  kvs and its "
        "baselines are timed in alternating rounds in one process; a ratio is the median over "
        "rounds of kvs's time divided by the baseline's time in the same round, so it holds "
        "on a noisy machine even when the absolute numbers move.",
        "",
        markdown_table(operation_rows(results, checks, ranges=True)),
        "",
    ]
    lines += [f"- {line}" for line in _unavailable_lines(results)]
    labels = [f"- {name} {role}: {label}" for name, info in results.backends.items()
              for role, label in info.get("subjects", {}).items()]
    if labels:
        lines += ["", "What each column is:", "", *labels]
    lines += ["", f"## Targets: {len(checks) - missed - unknown} met, {missed} MISSED, "
                  f"{unknown} not available", "", markdown_table(check_rows(checks))]
    if results.contention:
        lines += ["", "## Contention", "",
                  "One counter incremented by every worker under a lock.  Hand-off = start of "
                  "the next holder's critical section minus the end of the previous holder's "
                  "(different workers); for `update()` that gap includes its write+release "
                  "round trip.  `handed over`: the share of critical sections that went to a "
                  "different worker than the one before (the rest were the same worker re-taking "
                  "the lock "
                  "at once, so a high updates/s with a low share means the others starved).  "
                  "`lost` and `overlaps` must be 0.  A backend's variants run in alternating "
                  "rounds (each in turn, then again); the figures are totals over the rounds, "
                  "and the targets' ratios the median of the per-round ratios.", "",
                  markdown_table(contention_rows(results))]
    for title, points, unit in (("Cost vs store size (µs/op)", results.store_size, "keys"),
                                ("Cost vs value size (µs/op)", results.value_size, "bytes"),
                                ("Throughput vs workers (ops/s)", results.workers, "workers")):
        if points:
            lines += ["", f"## {title}", "", markdown_table(scaling_rows(points, unit))]
    errors = [p for p in (*results.store_size, *results.value_size, *results.workers) if p.error]
    if errors:
        lines += ["", "Errors:", *(f"- {p.backend} {p.series} at {p.x:g}: {p.error}"
                                   for p in errors)]
    plots = meta.get("plots", [])
    if plots:
        lines += ["", "## Plots", "", *(f"![{name}]({name})" for name in plots)]
    lines += ["", "## Machine", "", "```", json.dumps(meta, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_outputs(results: RunResults, directory: Path) -> list[Path]:
    """latest.json and latest.md in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "latest.json"
    json_path.write_text(json.dumps(results.to_json(), indent=1, allow_nan=False) + "\n")
    md_path = directory / "latest.md"
    md_path.write_text(markdown_report(results))
    return [json_path, md_path]
