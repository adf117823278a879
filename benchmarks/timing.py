"""Timing: interleaved rounds, medians with min and max, percentiles.

Variants that are compared (kvs and its baselines) are timed in alternating
rounds inside one process, so a burst of noise from other work on the machine
hits all of them alike and the ratios hold even when absolute numbers move.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: One operation: called with a running index (used to pick keys).
Operation = Callable[[int], Any]


@dataclasses.dataclass
class Stat:
    """Microseconds per operation over several rounds."""

    median_us: float
    min_us: float
    max_us: float
    rounds: int
    ops_per_round: int
    #: µs per op of each round, in round order (rounds of compared variants interleave).
    samples: list[float] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stat:
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)
                      if field.name in data})


@dataclasses.dataclass
class Settings:
    """How long to measure: the knob between ``--quick`` and a full run."""

    rounds: int
    round_seconds: float
    max_ops_per_round: int = 200_000


def _run(op: Operation, count: int, start: int) -> float:
    """Seconds for ``count`` calls of ``op``, with the garbage collector paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        began = time.perf_counter()
        for index in range(start, start + count):
            op(index)
        return time.perf_counter() - began
    finally:
        if enabled:
            gc.enable()


def calibrate(op: Operation, round_seconds: float, limit: int) -> int:
    """How many calls of ``op`` fill one round (the calls double as a warm-up)."""
    count, elapsed = 1, 0.0
    while count < limit:
        elapsed = _run(op, count, 0)
        if elapsed >= round_seconds / 8:
            break
        count *= 2
    per_op = max(elapsed / count, 1e-9)
    return max(1, min(limit, math.ceil(round_seconds / per_op)))


def measure(variants: Mapping[str, Operation], settings: Settings) -> dict[str, Stat]:
    """Time every variant in interleaved rounds; µs per op, median/min/max over rounds.

    The order of the variants rotates every round so none is always first
    (first after a context switch) or last.
    """
    names = list(variants)
    counts = {name: calibrate(variants[name], settings.round_seconds,
                              settings.max_ops_per_round) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    offset = 0
    for round_index in range(settings.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = _run(variants[name], counts[name], offset)
            samples[name].append(elapsed / counts[name] * 1e6)
        offset += max(counts.values())
    return {name: Stat(median_us=statistics.median(values), min_us=min(values),
                       max_us=max(values), rounds=len(values), ops_per_round=counts[name],
                       samples=[round(value, 3) for value in values])
            for name, values in samples.items()}


def paired_ratio(numerator: Stat, denominator: Stat) -> float:
    """Median over rounds of numerator/denominator measured in the same round.

    Pairing each kvs round with the baseline round next to it cancels load
    that drifts during the run; without paired samples, the ratio of medians.
    """
    pairs = [(a, b) for a, b in zip(numerator.samples, denominator.samples) if b > 0]
    if pairs and len(numerator.samples) == len(denominator.samples):
        return statistics.median(a / b for a, b in pairs)
    return numerator.median_us / denominator.median_us


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
