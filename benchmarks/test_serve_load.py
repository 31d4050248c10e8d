"""Load test for ``p2p-serve``: N concurrent HTTP clients for S seconds against 127.0.0.1.

Each client POSTs a real facades val pair (512x256 JPEG; the server takes the model's input
half, as p2p-translate does) and waits for the PNG before sending the next, for ``seconds``.
Reports throughput, p50/p99 latency, and the engine batch sizes the server formed (from
its /metrics, as a histogram). Fails on any error or when no batch held more than one image.

    pytest benchmarks/test_serve_load.py --benchmark-only   # the default U-Net-256 model
    python benchmarks/test_serve_load.py --model runs/x/export/generator.onnx [--clients 32]

The server runs in its own process (``p2p-serve``, as users run it) so the clients' event
loop does not share a GIL with it; both share the machine's cores, which the report says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from benchlib import FACADES

from p2p.runtime import telemetry as metrics

CLIENTS = int(os.environ.get("P2P_SERVE_CLIENTS", 32))
SECONDS = float(os.environ.get("P2P_SERVE_SECONDS", 20))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, *args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("p2p-serve")
    proc = subprocess.Popen([str(exe), "--model", str(model), "--port", str(port),
                             "--no-access-log", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # TensorRT may build an engine first
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"p2p-serve exited {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("p2p-serve did not answer /healthz within 120 s")
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies, statuses, failures = [], {}, []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t_end = time.perf_counter() + seconds

        async def one_client(i: int) -> None:
            k = i
            while time.perf_counter() < t_end:
                body = bodies[k % len(bodies)]
                k += clients
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/translate", content=body,
                                          headers={"Content-Type": "image/jpeg"})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200 and r.content[:4] == b"\x89PNG":
                        latencies.append(time.perf_counter() - t0)
                    else:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "statuses": statuses, "failures": failures, "wall": wall}


def batch_histogram(before: dict, after: dict) -> dict[int, int]:
    """Exact batch-size counts from the server's cumulative p2p_batch_size buckets."""
    def counts(samples):
        cum = {int(float(k.split('"')[1])): v for k, v in samples.items()  # le="1.0"
               if k.startswith("p2p_batch_size_bucket") and '"+Inf"' not in k}
        return {size: cum[size] - cum.get(size - 1, 0) for size in sorted(cum)}
    a, b = counts(before), counts(after)
    return {size: int(b[size] - a.get(size, 0)) for size in b if b[size] - a.get(size, 0)}


def run_load(model: Path, bodies: list[bytes], clients: int = CLIENTS, seconds: float = SECONDS,
             server_args: tuple[str, ...] = ()) -> dict:
    port = free_port()
    proc = start_server(model, port, *server_args)
    url = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(url + "/healthz").json()
        httpx.post(url + "/translate", content=bodies[0], timeout=120)  # warm: not measured
        before = metrics.parse(httpx.get(url + "/metrics").text)
        res = asyncio.run(_load(url, bodies, clients, seconds))
        after = metrics.parse(httpx.get(url + "/metrics").text)
    finally:
        stop_server(proc)
    lat = np.sort(np.asarray(res["latencies"])) if res["latencies"] else np.zeros(1)
    hist = batch_histogram(before, after)
    batches = sum(hist.values())
    return {
        "model": str(model), "provider": health["provider"], "clients": clients,
        "seconds": round(res["wall"], 2), "requests_ok": len(res["latencies"]),
        "errors": len(res["failures"]), "first_errors": res["failures"][:5],
        "statuses": {str(k): v for k, v in sorted(res["statuses"].items())},
        "images_per_s": round(len(res["latencies"]) / res["wall"], 2),
        "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1),
        "batch_histogram": hist, "batches": batches,
        "mean_batch": round(sum(k * v for k, v in hist.items()) / batches, 2) if batches else 0,
        "cpus": os.cpu_count(), "shared_machine_note": "clients and server share these CPUs",
    }


def facades_bodies(n: int = 32) -> list[bytes]:
    files = sorted((FACADES / "val").glob("*.jpg"), key=lambda p: int(p.stem))[:n]
    if not files:
        raise FileNotFoundError(f"no facades val images under {FACADES}; set P2P_DATA (or "
                                "P2P_FACADES)")
    return [f.read_bytes() for f in files]


def check(result: dict) -> None:
    assert result["errors"] == 0, result["first_errors"]
    assert result["requests_ok"] > 0
    assert max(result["batch_histogram"]) > 1, f"no batch held >1 image: {result}"


# --- pytest (make bench) ------------------------------------------------------------------

def test_serve_load(benchmark, machine, model_path, facades_val):
    from benchlib import record

    record(benchmark, machine, kind="serve", provider="cpu", precision="fp32", batch_size=16,
           images_per_round=0, clients=CLIENTS, seconds=SECONDS)
    bodies = facades_bodies()
    results = []
    benchmark.pedantic(lambda: results.append(run_load(model_path, bodies,
                                                       server_args=("--provider", "cpu"))),
                       rounds=1, iterations=1)
    result = results[0]
    benchmark.extra_info.update(result)
    print(json.dumps(result, indent=1))
    check(result)


# --- a script, for any model --------------------------------------------------------------

if __name__ == "__main__":
    import click

    @click.command()
    @click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  required=True)
    @click.option("--clients", type=int, default=CLIENTS, show_default=True)
    @click.option("--seconds", type=float, default=SECONDS, show_default=True)
    @click.option("--server-arg", "server_args", multiple=True,
                  help="Passed to p2p-serve, e.g. --server-arg=--max-batch=8")
    def main(model, clients, seconds, server_args):
        result = run_load(model, facades_bodies(), clients, seconds, tuple(server_args))
        click.echo(json.dumps(result, indent=1))
        check(result)

    main()
