"""The OpenVINO backend against onnxruntime's CPU provider on a tiny U-Net, and its refusals."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from p2p.runtime.errors import ModelError, ProviderError
from p2p.runtime.metadata import ModelMetadata

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'p2p[openvino]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference here")
torch = pytest.importorskip("torch", reason="torch builds the tiny test model")

from p2p.runtime.engine import Engine, EngineOptions  # noqa: E402
from p2p.runtime.backends.openvino import OpenVINOSession, backend  # noqa: E402

SIZE = 32


def export_tiny(path, with_metadata=True, axes=None):
    """A tiny U-Net-32 (ngf 4, per-image instance norm) as ONNX with a dynamic batch axis."""
    import onnx
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    torch.manual_seed(0)
    g = init_weights(UnetGenerator(ModelConfig(image_size=SIZE, ngf=4, norm="instance")), 0.2).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's tracer chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(g, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}
                          if axes is None else axes)
    if with_metadata:
        model = onnx.load(str(path))
        meta = ModelMetadata(direction="BtoA", image_size=SIZE, size_multiple=SIZE,
                             dynamic_size=bool(axes and 2 in axes["input"]), color_space="rgb", in_channels=3,
                             out_channels=3, norm_mode="per-image")
        for k, v in meta.to_props().items():
            prop = model.metadata_props.add()
            prop.key, prop.value = k, v
        onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("ov") / "tiny.onnx")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (5, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tiny, batch):
    session = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def psnr(a, b):  # images in [-1, 1]: peak-to-peak 2
    return 10 * np.log10(4.0 / np.mean((a - b) ** 2))


def test_fp32_matches_onnxruntime(tiny, batch, reference):
    # batch_size 2 over 5 images: full batches plus a smaller last one, each compiled.
    session = OpenVINOSession(tiny, precision="fp32", threads=1, batch_size=2)
    out = session.run(batch)
    assert session.provider == "openvino"
    assert session.compiled_precision == "f32"
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.abs(out - reference).max() < 1e-4
    assert np.abs(reference).max() > 0.1  # the comparison is not between two near-zero outputs


def test_subpixel_rewrite_is_exact(tiny, batch, reference):
    # U-Net-32 has 5 up-convolutions; all become sub-pixel convolutions, none is left.
    rewritten = OpenVINOSession(tiny, batch_size=5)
    plain = OpenVINOSession(tiny, batch_size=5, subpixel=False)
    assert rewritten.subpixel_layers == 5 and plain.subpixel_layers == 0
    ops = {op.get_type_name() for op in rewritten.model.get_ordered_ops()}
    assert "ConvolutionBackpropData" not in ops and "DepthToSpace" in ops
    assert np.abs(rewritten.run(batch) - reference).max() < 1e-4
    assert np.abs(plain.run(batch) - reference).max() < 1e-4
    assert "5 up-convolutions as sub-pixel convolutions)" in rewritten.describe()
    assert "up-convolution" not in plain.describe()
    rewritten.subpixel_layers = 1  # a model with one: the count and the noun agree
    assert rewritten.describe().endswith(", 1 up-convolution as a sub-pixel convolution)")


def test_batch_invariant_and_outputs_not_aliased(tiny, batch, reference):
    session = OpenVINOSession(tiny, batch_size=1)
    first = session.run(batch[:1])
    second = session.run(batch[1:2])  # same request, same output buffer inside openvino
    assert np.abs(first - reference[:1]).max() < 1e-4
    assert np.abs(second - reference[1:2]).max() < 1e-4


@pytest.mark.parametrize("streams", [1, 2])
def test_any_batch_size_on_one_compiled_model(tiny, batch, reference, streams):
    # One image per request, one request in flight per stream: every n from 1 to 5 runs on
    # the same compiled model, outputs in input order.
    session = OpenVINOSession(tiny, batch_size=4, streams=streams)
    assert session.streams == streams and session.request_batch == 1
    for n in (1, 2, 3, 4, 5):
        out = session.run(batch[:n])
        assert out.shape == (n, 3, SIZE, SIZE)
        assert np.abs(out - reference[:n]).max() < 1e-4


def test_submitted_batches_queue_on_the_streams_in_order(tiny, batch, reference):
    """submit() queues each batch's requests behind the last one's (the pipeline keeps
    the next batch waiting on the streams): every Future gets its own batch's outputs."""
    import threading

    before = set(threading.enumerate())  # (other sessions' threads, not yet collected)
    session = OpenVINOSession(tiny, batch_size=2, streams=2)
    futures = [session.submit(batch[k:k + 2]) for k in (0, 2, 4)]
    outs = [f.result(timeout=60) for f in futures]
    assert [o.shape[0] for o in outs] == [2, 2, 1]
    assert np.abs(np.concatenate(outs) - reference).max() < 1e-4
    workers = [t for t in set(threading.enumerate()) - before if t.name == "p2p-openvino"]
    assert len(workers) >= 2
    session.close()
    assert not any(t.is_alive() for t in workers)  # close stops the stream threads
    with pytest.raises(ProviderError, match="closed"):
        session.submit(batch[:1])


def test_a_failing_request_fails_its_future_naming_the_file(tiny, batch):
    session = OpenVINOSession(tiny, batch_size=2, streams=2)
    bad = np.zeros((2, 3, SIZE + 8, SIZE), np.float32)  # a shape the compiled model refuses
    fut = session.submit(bad)
    with pytest.raises(ModelError, match=r"tiny\.onnx: openvino failed on input \[2, 3, 40, 32\]"):
        fut.result(timeout=60)
    assert session.run(batch[:2]).shape == (2, 3, SIZE, SIZE)  # the streams still serve
    session.close()


def test_engine_submit_runs_ahead_on_onnxruntime_too(tiny, batch, reference, tmp_path,
                                                       monkeypatch):
    """Backends without streams of their own (onnxruntime) run submitted batches on one
    engine thread, in order; the finite check holds on that path as on run()."""
    monkeypatch.setenv("P2P_CACHE", str(tmp_path))
    with Engine(tiny, "cpu", batch_size=2) as engine:
        futures = [engine.submit(batch[k:k + 2]) for k in (0, 2, 4)]
        out = np.concatenate([f.result(timeout=60) for f in futures])
        assert np.abs(out - reference).max() < 1e-4
        nan = np.full((1, 3, SIZE, SIZE), np.nan, np.float32)
        from p2p.runtime.errors import NonFiniteOutput

        with pytest.raises(NonFiniteOutput):
            engine.submit(nan).result(timeout=60)


def test_streams_default_to_cores_and_batch(tiny):
    from p2p.runtime.host import physical_cores

    assert OpenVINOSession(tiny, batch_size=1).streams == 1  # one image: all threads on it
    assert OpenVINOSession(tiny, batch_size=8, threads=1).streams == 1
    assert OpenVINOSession(tiny, batch_size=8).streams == min(8, physical_cores())


def test_bf16_close_to_fp32_or_refused(tiny, batch, reference):
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:  # never a silent FP32 run under a bf16 label
        with pytest.raises(ProviderError, match="no native BF16"):
            OpenVINOSession(tiny, precision="bf16")
        return
    session = OpenVINOSession(tiny, precision="bf16", batch_size=5)
    out = session.run(batch)
    assert session.compiled_precision == "bf16"
    assert out.dtype == np.float32
    assert 0 < np.abs(out - reference).max()  # really ran in reduced precision
    assert psnr(out, reference) > 35


def test_dynamic_size_model_runs_any_multiple(tmp_path):
    axes = {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}}
    path = export_tiny(tmp_path / "dyn.onnx", axes=axes)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session = OpenVINOSession(path, batch_size=2)
    assert session.metadata.dynamic_size
    rng = np.random.default_rng(1)
    for h, w in ((32, 32), (64, 96)):
        x = rng.uniform(-1, 1, (3, 3, h, w)).astype(np.float32)
        out = session.run(x)
        assert out.shape == (3, 3, h, w)
        assert np.abs(out - ref.run(None, {"input": x})[0]).max() < 1e-4


def test_fixed_batch_model_runs_in_requests_of_it(tmp_path, batch, reference):
    path = export_tiny(tmp_path / "fixed.onnx", axes={})  # batch exported as 1
    session = OpenVINOSession(path, batch_size=8)
    assert session.fixed_batch == 1 and session.batch_size == 1
    assert np.abs(session.run(batch[:3]) - reference[:3]).max() < 1e-4


def test_fixed_batch_above_one_pads_the_last_request(tmp_path, batch, reference):
    import onnx

    path = export_tiny(tmp_path / "fixed2.onnx", axes={})
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 2  # a model exported at batch 2
    onnx.save(model, str(path))
    session = OpenVINOSession(path, batch_size=8)
    assert session.fixed_batch == 2 and session.request_batch == 2
    out = session.run(batch[:3])  # requests of 2 + (1 + 1 padding)
    assert out.shape == (3, 3, SIZE, SIZE)
    assert np.abs(out - reference[:3]).max() < 1e-4


def test_engine_backend_factory(tiny, batch, reference):
    # Without a precision field (today's EngineOptions) the backend runs fp32.
    b = backend("openvino", tiny, None, EngineOptions(batch_size=3, threads=1))
    assert b.provider == "openvino" and b.precision == "fp32" and b.fixed_batch is None
    assert "openvino (CPU, fp32, 1 stream x 1 thread" in b.describe()
    b.check_size(SIZE, SIZE)
    assert np.abs(b.run(batch) - reference).max() < 1e-4
    b.close()


def test_metadata_read_without_onnxruntime(tiny):
    session = OpenVINOSession(tiny)
    assert session.metadata.direction == "BtoA"
    assert session.metadata.image_size == SIZE
    assert session.metadata.norm_mode == "per-image"


def test_missing_openvino_is_a_provider_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import now raises ImportError
    with pytest.raises(ProviderError, match=r"pip install 'p2p\[openvino\]'"):
        OpenVINOSession(tiny)


def test_missing_device_is_a_provider_error(tiny):
    with pytest.raises(ProviderError, match="no NOSUCHDEVICE device here"):
        OpenVINOSession(tiny, device="NOSUCHDEVICE")


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp16"}, "fp32|bf16"),
    ({"batch_size": 0}, "batch size"),
    ({"threads": 0}, "threads"),
])
def test_bad_arguments(tiny, kwargs, match):
    with pytest.raises(ProviderError, match=match):
        OpenVINOSession(tiny, **kwargs)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        OpenVINOSession(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="garbage.onnx: not an ONNX model"):  # modelfile.py
        OpenVINOSession(garbage)
    bare = export_tiny(tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ModelError, match="no p2p metadata"):
        OpenVINOSession(bare)


def test_load_errors_keep_openvino_s_reason(tmp_path):
    """OpenVINO's messages start with its own source location ("Exception from src/inference/
    src/cpp/core.cpp:84:"): the line must carry the reason after it."""
    import onnx

    model = onnx.load(str(export_tiny(tmp_path / "t.onnx")))
    model.graph.node[3].op_type = "NoSuchOp"  # a valid file OpenVINO cannot convert
    path = tmp_path / "unknown_op.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as e:
        OpenVINOSession(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: openvino cannot read it: ") and "\n" not in msg
    assert "No conversion rule found for operations: NoSuchOp" in msg, msg
    assert "Exception from" not in msg and ".cpp:" not in msg


def test_engine_runs_openvino_fp32_and_bf16(tiny, batch, reference):
    with Engine(tiny, "openvino", batch_size=2, precision="fp32") as engine:
        assert engine.provider == "openvino" and engine.precision == "fp32"
        assert np.abs(engine.run(batch) - reference).max() < 1e-4
    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if native:
        with Engine(tiny, "openvino", batch_size=2, precision="bf16") as engine:
            assert "bf16" in engine.describe()
            assert psnr(engine.run(batch), reference) > 35
    # The default (auto): BF16 with AMX, the measured faster of the two with AVX512_BF16
    # only (p2p.runtime.measure), FP32 without native BF16.
    from p2p.runtime.precision import cpu_flags

    with Engine(tiny, "openvino", batch_size=2) as engine:
        flags = cpu_flags()
        if "amx_bf16" in flags:
            assert engine.precision == "bf16", engine.choice.why
        elif "avx512_bf16" in flags and native:
            assert engine.precision in ("fp32", "bf16"), engine.choice.why
            assert "by measurement" in engine.choice.why
        else:
            assert engine.precision == "fp32", engine.choice.why


def test_engine_refuses_bf16_off_openvino(tiny):
    Engine(tiny, "openvino", precision="fp32").close()
    with pytest.raises(ProviderError, match="openvino"):
        Engine(tiny, "cpu", precision="bf16")
