"""``python -m benchmarks [--quick]``: run every benchmark, print and save the results.

The run starts its own servers, measures, prints the tables and the target
checks (met / MISSED / not available) to stdout with its progress on stderr (a
bar on a terminal, one plain line per phase otherwise), and writes
``latest.json``, ``latest.md`` and the PNG plots to ``benchmarks/results/local/``
(ignored by git), to the published ``benchmarks/results/`` with ``--save``, or
to ``--output DIR``.  Missed targets do not change the exit status unless
``--strict`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import tqdm

import kvs.testing
from benchmarks import backends, contention, plots, report, scaling, suites
from benchmarks.servers import ServerSet
from benchmarks.subjects import Subject
from benchmarks.timing import Settings

#: The published results (``--save``): README links to them, git tracks them.
RESULTS = Path(__file__).resolve().parent / "results"
#: Where a run writes by default: ignored by git, so a run never dirties the tree.
LOCAL_RESULTS = RESULTS / "local"
PHASES = ("ops", "contention", "workers", "value", "size")


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much to measure; ``quick`` must finish in < 2 min, ``full`` in < 10."""

    name: str
    ops: Settings
    contention_seconds: float
    #: The contention variants of a backend run in this many alternating rounds.
    contention_rounds: int
    worker_counts: tuple[int, ...]
    worker_seconds: float
    worker_repeats: int
    value_sizes: tuple[int, ...]
    value: Settings
    store_sizes: tuple[int, ...]
    size: Settings


VALUE_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)

PROFILES = {
    "quick": Profile("quick", Settings(rounds=7, round_seconds=0.015), 1.0, 1, (1, 4, 16), 0.3, 2,
                     VALUE_SIZES, Settings(rounds=3, round_seconds=0.015),
                     (1_000, 10_000, 100_000), Settings(rounds=3, round_seconds=0.015)),
    "full": Profile("full", Settings(rounds=15, round_seconds=0.04), 3.0, 3, (1, 2, 4, 8, 16),
                    0.6, 3,
                    VALUE_SIZES, Settings(rounds=5, round_seconds=0.04),
                    (1_000, 10_000, 100_000, 1_000_000), Settings(rounds=5, round_seconds=0.04)),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (< 2 min)")
    parser.add_argument("--backends", default=",".join(backends.BACKENDS),
                        help="comma list of backends (default: all)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma list of phases to run (default: {','.join(PHASES)})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--save", action="store_true",
                       help="write the published results in benchmarks/results/ (default: "
                            "benchmarks/results/local/, which git ignores)")
    where.add_argument("--output", type=Path, default=None,
                       help="directory for latest.json, latest.md and the plots")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any target is MISSED")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="measure nothing: redo the tables, checks and plots of a saved "
                             "latest.json")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS if args.save else LOCAL_RESULTS
    args.backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    args.phases = tuple(name.strip() for name in args.phases.split(",") if name.strip())
    for name in args.backends:
        if name not in backends.BACKENDS:
            parser.error(f"unknown backend {name!r}; known: {', '.join(backends.BACKENDS)}")
    for name in args.phases:
        if name not in PHASES:
            parser.error(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
    return args


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_info(args: argparse.Namespace, profile: Profile) -> dict[str, Any]:
    """What the numbers were measured on (no host names, no local paths)."""
    return {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "mode": profile.name,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "kvs_commit": _git_commit(),
        "packages": {name: _version(name) for name in (
            "dogpile-kvs", "dogpile.cache", "redis", "hiredis", "pymemcache", "msgpack",
            "etcd3gw", "requests")},
        "load_before": _load(),
        "backends": list(args.backends),
        "phases": list(args.phases),
    }


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Progress:
    """Progress over every step of the run, on ``stream`` (stderr by default).

    On a terminal, a tqdm bar.  Anywhere else (a file, a pipe, CI's log) one
    plain line per phase and one at the end: never a carriage return.
    """

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.done = 0
        self.began = time.monotonic()
        self.bar: tqdm.tqdm[Any] | None = None
        if _is_terminal(self.stream):
            self.bar = tqdm.tqdm(total=total, file=self.stream, unit="step",
                                 dynamic_ncols=True, leave=False)

    def _line(self, text: str) -> None:
        print(f"bench [{self.done}/{self.total} steps, {time.monotonic() - self.began:.0f} s] "
              f"{text}", file=self.stream, flush=True)

    def phase(self, name: str) -> None:
        if self.bar is None:
            self._line(name)

    def label(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text[:40], refresh=True)

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line("done")


def _steps(setups: dict[str, backends.BackendSetup], profile: Profile,
           phases: Sequence[str]) -> int:
    available = [s for s in setups.values() if s.available]
    per_backend = 0
    if "ops" in phases:
        per_backend += len(suites.OPERATIONS)
    if "workers" in phases:
        per_backend += len(profile.worker_counts)
    if "value" in phases:
        per_backend += len(profile.value_sizes)
    ops_only = [s for s in available if s.ops_only]
    available = [s for s in available if not s.ops_only]
    total = per_backend * len(available)
    if "ops" in phases:
        total += len(suites.OPERATIONS) * len(ops_only)
    if "size" in phases:
        total += sum(len(s.store_sizes(profile.store_sizes)) for s in available)
    if "contention" in phases:
        total += profile.contention_rounds * sum(
            len(contention.variants_for(s, None)) for s in available)
        total += 2 if any(s.name == "redis" for s in available) else 0
    return max(total, 1)


def run_ops(setups: dict[str, backends.BackendSetup], profile: Profile,
            results: report.RunResults, progress: Progress) -> None:
    for setup in setups.values():
        if not setup.available:
            results.operations += suites.unavailable_rows(setup)
            continue
        subjects, missing = suites.subjects_for(setup, f"ops-{setup.name}")
        results.backends[setup.name]["subjects"] = {
            role: subject.label for role, subject in subjects.items()}
        for spec in suites.OPERATIONS:
            progress.label(f"{setup.name}: {spec.name}")
            results.operations.append(
                suites.run_operation(setup, subjects, missing, spec, profile.ops))
            progress.step()


def run_contention(setups: dict[str, backends.BackendSetup], servers: ServerSet,
                   profile: Profile, results: report.RunResults, progress: Progress) -> None:
    redis_port = servers.redis.port if servers.redis is not None else None
    for setup in setups.values():
        if not setup.available or setup.ops_only:
            continue
        # Alternating rounds (each variant in turn, then again): a machine that
        # slows down meanwhile slows every variant, and the checks pair the rounds.
        variants = contention.variants_for(setup, redis_port)
        rounds: dict[str, list[contention.ContentionResult]] = {v.name: [] for v in variants}
        seconds = profile.contention_seconds / profile.contention_rounds
        for _ in range(profile.contention_rounds):
            for variant in variants:
                progress.label(f"contention: {variant.backend} {variant.name}")
                rounds[variant.name].append(contention.run_variant(setup, variant, seconds))
                progress.step()
        results.contention += [contention.merge_rounds(rounds[v.name]) for v in variants]


def run_workers(setups: dict[str, backends.BackendSetup], profile: Profile,
                results: report.RunResults, progress: Progress) -> None:
    for setup in setups.values():
        if not setup.available or setup.ops_only:
            continue
        factories: dict[str, Callable[[], Subject]] = {
            "kvs": functools.partial(setup.kvs_subject, f"tp-{setup.name}")}
        if setup.raw_factory is not None:
            factories["raw"] = setup.raw_factory
        progress.label(f"throughput: {setup.name}")
        results.workers += scaling.throughput_series(
            setup, factories, profile.worker_counts, profile.worker_seconds,
            profile.worker_repeats, progress.step)


def run_value_size(setups: dict[str, backends.BackendSetup], profile: Profile,
                   results: report.RunResults, progress: Progress) -> None:
    for setup in setups.values():
        if not setup.available or setup.ops_only:
            continue
        subjects: dict[str, Subject] = {"kvs": setup.kvs_subject(f"vs-{setup.name}")}
        if setup.raw_factory is not None:
            subjects["raw"] = setup.raw_factory()
        progress.label(f"value size: {setup.name}")
        results.value_size += scaling.value_size(setup, subjects, profile.value_sizes,
                                                 profile.value, progress.step)


def run_store_size(setups: dict[str, backends.BackendSetup], profile: Profile,
                   results: report.RunResults, progress: Progress) -> None:
    for setup in setups.values():
        if not setup.available or setup.ops_only:
            continue
        progress.label(f"store size: {setup.name}")
        results.store_size += scaling.store_size(setup, setup.store_sizes(profile.store_sizes),
                                                 profile.size, progress.step)
        if setup.process_local:
            kvs.testing.reset_registry()  # free the big in-memory store now


def measure_all(args: argparse.Namespace) -> report.RunResults:
    """Start the servers and run every requested phase."""
    profile = PROFILES["quick" if args.quick else "full"]
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: workers are forked
    began = time.monotonic()
    results = report.RunResults(meta=machine_info(args, profile))
    with ServerSet(args.backends) as servers:
        workdir = servers.root / "data"
        workdir.mkdir()
        setups = backends.build(servers, workdir, args.backends)
        results.meta["servers"] = servers.versions()
        results.backends = {name: {"available": setup.available, "reason": setup.reason,
                                   "subjects": {}} for name, setup in setups.items()}
        progress = Progress(_steps(setups, profile, args.phases))
        try:
            if "ops" in args.phases:
                progress.phase("operations")
                run_ops(setups, profile, results, progress)
            if "contention" in args.phases:
                progress.phase("contention")
                run_contention(setups, servers, profile, results, progress)
            if "workers" in args.phases:
                progress.phase("throughput by workers")
                run_workers(setups, profile, results, progress)
            if "value" in args.phases:
                progress.phase("value size")
                run_value_size(setups, profile, results, progress)
            if "size" in args.phases:
                progress.phase("store size")
                run_store_size(setups, profile, results, progress)
        finally:
            progress.close()
    results.meta["load_after"] = _load()
    results.meta["wall_seconds"] = round(time.monotonic() - began, 1)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        results = report.RunResults.from_json(json.loads(args.from_json.read_text()))
    else:
        results = measure_all(args)
    if not args.no_plots:
        made = plots.write_plots(results, args.output)
        results.meta["plots"] = [path.name for path in made]
    written = report.write_outputs(results, args.output)
    print(report.terminal_report(results))
    print()
    print(f"wall time {results.meta['wall_seconds']:.0f} s; wrote "
          + ", ".join(str(path) for path in [*written, *(
              args.output / name for name in results.meta.get("plots", []))]))
    if not args.save and args.output.resolve() == LOCAL_RESULTS.resolve():
        print("(a local run, ignored by git: --save writes the published results in "
              "benchmarks/results/)")
    missed = [c for c in report.evaluate(results) if c.status == report.MISSED]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
