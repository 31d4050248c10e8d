"""``p2p-serve``'s Prometheus metrics, through the official client (``prometheus_client``,
extra ``p2p[serve]``).

Each ``Service`` has its own ``CollectorRegistry`` (not the process-wide default), so two
servers or a test's many servers in one process never share or clash on series. The client
is thread-safe: the event loop and the batcher's thread both record.

    p2p_requests_total{status}           POST /translate requests by HTTP status
    p2p_errors_total{reason}             failed requests by reason
    p2p_request_latency_seconds          histogram, body received to response ready
    p2p_batch_size, p2p_inference_seconds  histograms per engine batch
    p2p_queue_depth, p2p_max_batch       gauges (queue depth read when scraped)
    p2p_model_info{model,provider,precision,...}   1, labelled with what is served and where it runs
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

# Request latency buckets (seconds): from a cached tiny model to a big batch on a slow CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self, max_batch: int, queue_depth: Callable[[], float], info: dict[str, str]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("p2p_requests", "POST /translate requests by HTTP status.",
                                ["status"], registry=r)
        self.errors = Counter("p2p_errors", "Failed /translate requests by reason.", ["reason"],
                              registry=r)
        self.latency = Histogram("p2p_request_latency_seconds", "POST /translate latency, body "
                                 "received to response ready.", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.batch_size = Histogram("p2p_batch_size", "Images per engine batch.",
                                    buckets=range(1, max_batch + 1), registry=r)
        self.inference = Histogram("p2p_inference_seconds", "Engine time per batch.",
                                   buckets=LATENCY_BUCKETS, registry=r)
        Gauge("p2p_queue_depth", "Requests admitted and not yet in a batch.",
              registry=r).set_function(queue_depth)
        Gauge("p2p_max_batch", "Largest engine batch (--max-batch).", registry=r).set(max_batch)
        Gauge("p2p_model_info", "The model being served and where it runs.", list(info),
              registry=r).labels(**info).set(1)

    def request(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)

    def error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def sample(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when never recorded), e.g.
        ``sample("p2p_errors_total", reason="timeout")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def parse(text: str) -> dict[str, float]:
    """'name{k="v",...}' -> value for every sample of a text exposition: what tests and the
    load test read back."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples
