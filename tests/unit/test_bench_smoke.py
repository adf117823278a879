"""The benchmark harness's report code on tiny synthetic results (no servers, no timing).

Keeps ``make bench`` from rotting between runs: ratios, met/MISSED/not
available checks, the tables, JSON round trip, markdown and plots.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from benchmarks import __main__ as bench_main
from benchmarks import contention, plots, report, suites
from benchmarks.scaling import Point
from benchmarks.suites import OperationResult
from benchmarks.timing import Settings, Stat, measure, paired_ratio, percentile


def stat(*samples: float) -> Stat:
    ordered = sorted(samples)
    return Stat(median_us=ordered[len(ordered) // 2], min_us=ordered[0], max_us=ordered[-1],
                rounds=len(samples), ops_per_round=10, samples=list(samples))


def synthetic() -> report.RunResults:
    results = report.RunResults(
        meta={"mode": "quick", "command": "python -m benchmarks --quick"},
        backends={"redis": {"available": True, "reason": None,
                            "subjects": {"kvs": "kvs store", "raw": "redis-py"}},
                  "memcached": {"available": False,
                                "reason": "memcached not found on PATH"}})
    results.operations = [
        OperationResult("redis", "get 100B", {"kvs": stat(105, 210, 52.5),
                                              "raw": stat(100, 200, 50)}, {}),
        OperationResult("redis", "set 100B", {"kvs": stat(150, 300, 75),
                                              "raw": stat(100, 200, 50)}, {}),
        OperationResult("redis", "get_multi 100", {"kvs": stat(120, 121, 122),
                                                   "raw": stat(100, 100, 100),
                                                   "dogpile": stat(130, 130, 130)}, {}),
        OperationResult("memcached", "get 100B", {}, {"kvs": "memcached not found on PATH"}),
    ]
    results.contention = [
        contention.ContentionResult("redis", "kvs update()", 8, "processes", updates=100,
                                    seconds=1.0, updates_per_s=100.0, handoffs=90,
                                    handoff_p50_us=50.0, handoff_p99_us=90.0, lost_updates=0,
                                    overlaps=0),
        contention.ContentionResult("redis", "redis-py Lock (sleep=0.1 s, default)", 8,
                                    "processes", error="worker 3: boom"),
    ]
    results.store_size = [Point("redis", "kvs get", 1_000, 10.0),
                          Point("redis", "kvs get", 100_000, 12.0),
                          Point("redis", "kvs set", 1_000, 10.0),
                          Point("redis", "kvs set", 100_000, 20.0),
                          # The machine got busier: medians say 2x, the reference says flat.
                          Point("memory", "kvs get", 1_000, 10.0, relative=1.0),
                          Point("memory", "kvs get", 100_000, 20.0, relative=1.1),
                          Point("memory", "raw get", 1_000, 1.0, relative=1.0),
                          Point("memory", "raw get", 100_000, 2.0, relative=1.8)]
    results.value_size = [Point("redis", "kvs get", 100, 10.0), Point("redis", "raw get", 100, 8.0),
                          Point("redis", "kvs get", 10_000, 20.0),
                          Point("redis", "raw get", 10_000, float("nan"), error="Timeout")]
    results.workers = [Point("redis", "kvs get+set", 1, 1000.0),
                       Point("redis", "kvs get+set", 4, 3000.0)]
    return results


def by_metric(checks: list[report.Check]) -> dict[tuple[str, str], report.Check]:
    return {(check.backend, check.metric): check for check in checks}


def test_ratios_are_paired_by_round() -> None:
    # Load drifts: each kvs round ran next to a baseline round under the same load.
    assert paired_ratio(stat(10, 100, 12), stat(10, 10, 100)) == pytest.approx(1.0)
    # Without per-round samples it falls back to the ratio of medians.
    assert paired_ratio(Stat(30, 20, 40, 3, 1), Stat(20, 10, 30, 3, 1)) == pytest.approx(1.5)


def test_targets_met_missed_and_not_available() -> None:
    checks = by_metric(report.evaluate(synthetic()))
    assert checks[("redis", "get 100B: kvs/raw")].status == report.MET
    assert checks[("redis", "get 100B: kvs/raw")].ratio == pytest.approx(1.05)
    assert checks[("redis", "set 100B: kvs/raw")].status == report.MISSED
    assert checks[("redis", "get_multi 100: kvs/raw")].status == report.MET
    # "faster than dogpile" is strict, and 120/130 is faster.
    assert checks[("redis", "get_multi 100: kvs/dogpile")].status == report.MET
    # Targets whose rows were not measured are reported, never dropped.
    assert checks[("redis", "update: kvs/raw")].status == report.NOT_AVAILABLE
    memcached = checks[("memcached", "get 100B: kvs/raw")]
    assert memcached.status == report.NOT_AVAILABLE
    assert "memcached not found on PATH" in memcached.detail
    # Store size: 10 -> 12 is flat, 10 -> 20 is not.
    assert checks[("redis", "kvs get at 100k keys")].status == report.MET
    assert checks[("redis", "kvs set at 100k keys")].status == report.MISSED
    # With a reference store timed in the same rounds, the paired ratio decides.
    assert checks[("memory", "kvs get at 100k keys")].ratio == pytest.approx(1.1)
    assert checks[("memory", "kvs get at 100k keys")].status == report.MET
    # The raw client's growth is context for the kvs check, not a check of its own.
    assert "raw client grows 1.80x" in checks[("memory", "kvs get at 100k keys")].detail
    assert ("memory", "raw get at 100k keys") not in checks


def sqlite_contention(kvs_rate: float, raw_rate: float, lost: int = 0
                      ) -> list[contention.ContentionResult]:
    return [contention.ContentionResult("sqlite", name, 8, "processes", updates=1000,
                                        seconds=1.0, updates_per_s=rate, lost_updates=lost_here,
                                        overlaps=0)
            for name, rate, lost_here in (("kvs update()", kvs_rate, lost),
                                          ("raw sqlite3 BEGIN IMMEDIATE", raw_rate, 0))]


@pytest.mark.parametrize(("kvs_rate", "lost", "status"), [
    (850.0, 0, report.MET), (790.0, 0, report.MISSED), (1000.0, 1, report.MISSED)])
def test_sqlite_contention_share_of_the_raw_loop(kvs_rate: float, lost: int,
                                                 status: str) -> None:
    results = report.RunResults(meta={}, backends={})
    results.contention = sqlite_contention(kvs_rate, 1000.0, lost)
    check = by_metric(report.evaluate(results))[
        ("sqlite", "contention: update() updates/s over raw")]
    assert check.status == status
    assert check.ratio == pytest.approx(kvs_rate / 1000.0)
    assert f"lost {lost} (kvs)" in check.detail


def test_sqlite_contention_without_the_raw_loop_is_not_available() -> None:
    results = report.RunResults(meta={}, backends={})
    results.contention = sqlite_contention(850.0, 1000.0)[:1]
    check = by_metric(report.evaluate(results))[
        ("sqlite", "contention: update() updates/s over raw")]
    assert check.status == report.NOT_AVAILABLE


def test_terminal_and_markdown_show_every_status() -> None:
    results = synthetic()
    text = report.terminal_report(results)
    assert "MISSED" in text and "met" in text and "not available" in text
    assert "memcached: not available (memcached not found on PATH)" in text
    assert "error: worker 3: boom" in text
    markdown = report.markdown_report(results)
    assert "| redis | set 100B |" in markdown
    assert "1.50x" in markdown
    assert "## Targets:" in markdown


def test_outputs_round_trip_as_strict_json(tmp_path: Path) -> None:
    results = synthetic()
    written = report.write_outputs(results, tmp_path)
    assert sorted(path.name for path in written) == ["latest.json", "latest.md"]
    # Strict JSON: a NaN (the errored point) must have become null.
    data = json.loads((tmp_path / "latest.json").read_text(),
                      parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    again = report.RunResults.from_json(data)
    assert [c.to_json() for c in report.evaluate(again)] == data["checks"]
    assert again.operations[0].stats["kvs"].samples == [105, 210, 52.5]


def test_plots_are_written(tmp_path: Path) -> None:
    made = plots.write_plots(synthetic(), tmp_path)
    assert {path.name for path in made} == {"value_size.png", "workers.png", "store_size.png",
                                            "ratios.png"}
    for path in made:
        assert path.read_bytes().startswith(b"\x89PNG")


def test_handoff_analysis() -> None:
    spans = [(0, 0.0, 1.0), (1, 1.5, 2.0), (1, 2.1, 3.0), (0, 2.9, 3.5)]
    gaps, overlaps = contention.analyse(spans)
    assert gaps == [pytest.approx(0.5e6)]  # 0 -> 1; 1 -> 1 is the same worker
    assert overlaps == 1  # worker 0 entered at 2.9 while worker 1 held until 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)


@pytest.mark.parametrize("size", [100, 1_000, 10_000, 100_000])
def test_values_have_the_requested_size(size: int) -> None:
    assert abs(len(msgpack.packb(suites.make_value(size), use_bin_type=True)) - size) <= 4


def test_measure_interleaves_every_variant() -> None:
    calls: list[str] = []
    stats = measure({"a": lambda i: calls.append("a"), "b": lambda i: calls.append("b")},
                    Settings(rounds=3, round_seconds=0.001, max_ops_per_round=4))
    assert {name: s.rounds for name, s in stats.items()} == {"a": 3, "b": 3}
    assert all(len(s.samples) == 3 for s in stats.values())


# Where a run writes, and how it reports progress (issue 13, item 9).

def test_a_run_writes_the_ignored_folder_unless_saved() -> None:
    assert bench_main.parse_args([]).output == bench_main.LOCAL_RESULTS
    assert bench_main.parse_args(["--quick"]).output == bench_main.LOCAL_RESULTS
    assert bench_main.parse_args(["--save"]).output == bench_main.RESULTS
    assert Path(bench_main.__file__).resolve().parent / "results" == bench_main.RESULTS
    assert bench_main.LOCAL_RESULTS.parent == bench_main.RESULTS
    assert bench_main.parse_args(["--output", "elsewhere"]).output == Path("elsewhere")
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--save", "--output", "elsewhere"])


def test_the_default_folder_is_ignored_by_git_and_the_published_one_is_not() -> None:
    root = Path(bench_main.__file__).resolve().parents[1]
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")

    def ignored(path: Path) -> bool:
        done = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(root))],
                              cwd=root, capture_output=True, timeout=30, check=False)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode == 0

    for name in ("latest.json", "latest.md", "ratios.png", "workers.png"):
        assert ignored(bench_main.LOCAL_RESULTS / name)
        assert not ignored(bench_main.RESULTS / name)


def saved_run(tmp_path: Path) -> Path:
    results = synthetic()
    results.meta["wall_seconds"] = 1.0
    source = tmp_path / "saved.json"
    source.write_text(json.dumps(results.to_json(), allow_nan=False))
    return source


def test_main_writes_local_by_default_and_published_with_save(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    published, local = tmp_path / "results", tmp_path / "results" / "local"
    monkeypatch.setattr(bench_main, "RESULTS", published)
    monkeypatch.setattr(bench_main, "LOCAL_RESULTS", local)
    source = saved_run(tmp_path)

    assert bench_main.main(["--from-json", str(source), "--no-plots"]) == 0
    assert sorted(p.name for p in local.iterdir()) == ["latest.json", "latest.md"]
    assert sorted(p.name for p in published.iterdir()) == ["local"]  # nothing published
    assert "--save writes the published results" in capsys.readouterr().out

    assert bench_main.main(["--from-json", str(source), "--no-plots", "--save"]) == 0
    assert {p.name for p in published.iterdir()} == {"local", "latest.json", "latest.md"}
    assert json.loads((published / "latest.json").read_text())["meta"]["mode"] == "quick"
    assert "--save writes" not in capsys.readouterr().out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(progress: bench_main.Progress) -> None:
    for phase in ("operations", "contention"):
        progress.phase(phase)
        for index in range(3):
            progress.label(f"{phase}: step {index}")
            progress.step()
    progress.close()


def test_progress_off_a_terminal_is_plain_lines() -> None:
    stream = io.StringIO()
    progress = bench_main.Progress(6, stream)
    assert progress.bar is None
    drive(progress)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 3, lines  # one per phase, one at the end
    assert lines[0].startswith("bench [0/6 steps") and lines[0].endswith("operations")
    assert lines[1].startswith("bench [3/6 steps") and lines[1].endswith("contention")
    assert lines[2].startswith("bench [6/6 steps") and lines[2].endswith("done")


def test_progress_on_a_terminal_is_a_bar() -> None:
    stream = FakeTerminal()
    progress = bench_main.Progress(6, stream)
    assert progress.bar is not None
    drive(progress)
    assert "\r" in stream.getvalue()  # the bar redraws in place: the case the check avoids


def test_a_redirected_run_prints_no_carriage_return(tmp_path: Path) -> None:
    # The real command on one tiny phase (about 4 s), both streams to files.
    root = Path(bench_main.__file__).resolve().parents[1]
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--backends", "memory",
             "--phases", "ops", "--no-plots", "--output", str(tmp_path / "out")],
            cwd=root, stdout=stdout, stderr=stderr, timeout=120, check=False)
    report_text, progress_text = out.read_text(), err.read_text()
    assert done.returncode == 0, progress_text
    assert "\r" not in report_text and "\r" not in progress_text
    assert "memory" in report_text and "wrote" in report_text
    lines = progress_text.splitlines()
    assert lines[0].startswith("bench [0/") and lines[0].endswith("operations"), lines
    assert lines[-1].endswith("done"), lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latest.json", "latest.md"]


def test_contention_rounds_merge_into_totals_and_pair_round_by_round() -> None:
    def round_of(variant: str, updates: int, gaps: list[float]) -> contention.ContentionResult:
        return contention.ContentionResult("redis", variant, 8, "processes", updates=updates,
                                           seconds=1.0, updates_per_s=float(updates),
                                           handoffs=len(gaps), lost_updates=0, overlaps=0,
                                           gaps=gaps)

    # The machine slows down in the second round: both variants lose, the ratio holds.
    kvs = contention.merge_rounds([round_of("kvs", 3000, [100.0] * 9),
                                   round_of("kvs", 1500, [200.0] * 9),
                                   round_of("kvs", 2800, [110.0] * 9)])
    lock = contention.merge_rounds([round_of("lock", 1000, [1.0]),
                                    round_of("lock", 1000, [1.0]),
                                    round_of("lock", 1400, [1.0])])
    assert kvs.updates == 7300 and kvs.seconds == 3.0 and kvs.handoffs == 27
    assert kvs.round_rates == [3000.0, 1500.0, 2800.0]
    assert kvs.handoff_p50_us == 110.0 and kvs.lost_updates == 0
    assert contention.paired_speedup(kvs, lock) == pytest.approx(2.0)  # ratios 3, 1.5, 2
    assert "gaps" not in kvs.to_json()
    assert contention.ContentionResult.from_json(kvs.to_json()).round_rates == kvs.round_rates
    # Without rounds to pair, the totals.
    single = contention.ContentionResult("redis", "x", 8, "processes", updates_per_s=10.0)
    assert contention.paired_speedup(single, lock) == pytest.approx(10.0 / lock.updates_per_s)


def test_profile_ops_splits_the_memory_locked_write_into_its_layers() -> None:
    """profile_ops on kvs.memory (no server): every layer runs and is reported."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_ops", "--backend", "memory",
         "--op", "locked_write", "--rounds", "1", "--calls", "20", "--top", "3"],
        capture_output=True, text=True, timeout=120, check=True)
    for layer in ("raw", "floor", "backend", "kvs", "api/raw", "floor/raw", "kvs/raw"):
        assert layer in done.stdout
