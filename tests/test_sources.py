"""The pipeline's source/sink interface (runtime/pipeline.py docstring) with sources of many
pieces: order of puts, batches across jobs, close once, abort on any failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnx_models import identity_model
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ImageError
from p2p.runtime.pipeline import Job, Piece, TranslateConfig, run_jobs


class Frames:
    """n pieces of one value each (a stand-in for video frames); fails at ``bad`` if given."""

    def __init__(self, values, bad=None):
        self.values, self.bad = values, bad

    def pieces(self):
        for k, v in enumerate(self.values):
            if k == self.bad:
                raise ImageError(f"frame {k}: corrupt")
            yield Piece(np.full((3, 32, 32), v, np.float32), where=k)


class Collect:
    def __init__(self, log):
        self.log, self.got = log, []

    def put(self, where, y):
        self.got.append((where, float(y.mean())))

    def close(self):
        self.log.append(("close", self.got))

    def abort(self):
        self.log.append(("abort", self.got))


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    e = Engine(identity_model(tmp_path / "m.onnx", image_size=32), "cpu", batch_size=4)
    sizes = []
    submit = e.submit  # what the pipeline calls
    e.submit = lambda x: sizes.append(len(x)) or submit(x)
    e.sizes = sizes
    yield e
    e.close()


def test_many_pieces_per_job_in_order_batched_across_jobs(engine, tmp_path):
    jobs = [Job(Path(f"v{i}"), tmp_path / f"o{i}", tmp_path) for i in range(3)]
    values = {0: [0.1, 0.2, 0.3], 1: [0.5], 2: [-0.5, -0.25]}
    logs = {i: [] for i in range(3)}
    cfg = TranslateConfig(inputs=(), workers=2, progress=False)
    results = run_jobs(engine, jobs, cfg, opener=lambda job: (
        Frames(values[int(job.src.name[1])]), Collect(logs[int(job.src.name[1])])))
    assert results == [None, None, None]
    for i, vs in values.items():
        assert logs[i] == [("close", [(k, pytest.approx(v)) for k, v in enumerate(vs)])]
    assert engine.sizes == [4, 2]  # 6 pieces of three jobs, batch 4


def test_the_next_batch_is_queued_before_the_last_ones_outputs_are_written(engine, tmp_path):
    """The engine never waits on the pipeline: batch k + 1 is submitted before batch k's
    outputs go to the sinks (issue 21: the barrier at each batch's end cost ~10% on two
    cores), while the puts still come in piece order."""
    events = []
    submit = engine.submit

    def recorded(x):
        events.append(("submit", round(float(x[0].mean()), 2)))
        return submit(x)

    engine.submit = recorded

    class Log(Collect):
        def put(self, where, y):
            events.append(("put", round(float(y.mean()), 2)))
            super().put(where, y)

    values = [k / 10 for k in range(10)]  # 10 pieces, batch 4: batches at 0.0, 0.4, 0.8
    log = []
    cfg = TranslateConfig(inputs=(), workers=2, progress=False)
    results = run_jobs(engine, [Job(Path("v"), tmp_path / "o", tmp_path)], cfg,
                       opener=lambda job: (Frames(values), Log(log)))
    assert results == [None]
    assert [v for kind, v in events if kind == "put"] == pytest.approx(values)
    assert events.index(("submit", 0.4)) < events.index(("put", 0.0))
    assert events.index(("submit", 0.8)) < events.index(("put", 0.4))
    assert log == [("close", [(k, pytest.approx(v)) for k, v in enumerate(values)])]


def test_a_source_that_fails_midway_aborts_its_sink_alone(engine, tmp_path):
    jobs = [Job(Path("bad"), tmp_path / "o0", tmp_path), Job(Path("ok"), tmp_path / "o1", tmp_path)]
    logs = {"bad": [], "ok": []}
    cfg = TranslateConfig(inputs=(), workers=2, progress=False)
    results = run_jobs(engine, jobs, cfg, opener=lambda job: (
        Frames([0.1, 0.2, 0.3], bad=2 if job.src.name == "bad" else None),
        Collect(logs[job.src.name])))
    assert results == ["frame 2: corrupt", None]
    assert [kind for kind, _ in logs["bad"]] == ["abort"]  # never closed
    assert logs["ok"][0][0] == "close" and len(logs["ok"][0][1]) == 3


def test_an_opener_that_fails_is_that_jobs_reason(engine, tmp_path):
    jobs = [Job(Path("x"), tmp_path / "o", tmp_path)]

    def opener(job):
        raise ImageError("x: cannot open")

    cfg = TranslateConfig(inputs=(), progress=False)
    assert run_jobs(engine, jobs, cfg, opener=opener) == ["x: cannot open"]
