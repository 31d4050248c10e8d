"""Just enough of the Prometheus text format for ``p2p-serve``'s ``GET /metrics``.

Counters, histograms and labelled gauges, rendered as text exposition format 0.0.4. Written
here rather than pulled in from ``prometheus_client`` because the server needs five metrics
and the deployment install stays small. Updated from the event loop and read from it, with a
lock anyway so a worker thread may observe too.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets (seconds): from a cached tiny model to a big batch on a slow CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _label_value(v) -> str:
    return str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


class Counter:
    """A counter with one label (e.g. status="200"); each label value is its own series."""

    def __init__(self, name: str, help: str, label: str):
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, float] = {}
        self._lock = threading.Lock()

    def inc(self, label_value, amount: float = 1.0) -> None:
        with self._lock:
            key = str(label_value)
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, label_value) -> float:
        return self.values.get(str(label_value), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, v in sorted(self.values.items()):
                out.append(f"{self.name}{_labels({self.label: key})} {_num(v)}")
        return out


class Histogram:
    def __init__(self, name: str, help: str, buckets):
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last one: above every bucket (+Inf)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, v: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, v)] += 1
            self.sum += v
            self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            running = 0
            for le, n in zip(self.buckets + (math.inf,), self.counts):
                running += n  # Prometheus buckets are cumulative
                out.append(f'{self.name}_bucket{{le="{_num(le)}"}} {running}')
            out.append(f"{self.name}_sum {_num(self.sum)}")
            out.append(f"{self.name}_count {self.count}")
        return out


class Gauge:
    """A value read when scraped (``fn``), e.g. the queue depth, so it is never stale."""

    def __init__(self, name: str, help: str, fn: Callable[[], float], labels: dict | None = None):
        self.name, self.help, self.fn, self.labels = name, help, fn, labels or {}

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name}{_labels(self.labels)} {_num(self.fn())}"]


class Registry:
    def __init__(self):
        self.metrics: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


def parse(text: str) -> dict[str, float]:
    """'name{labels}' -> value for every sample line: what tests and the load test read back."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
