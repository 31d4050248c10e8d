"""Tiny ONNX models with p2p metadata, built with onnx.helper: tests need no exporter or torch.

    identity_model(path, dynamic_size=True)           # output == input: exact round trips
    conv_model(path, seed=0)                          # 3x3 conv + tanh, batch-invariant
    constant_model(path, bias=[a, b], in_channels=1)  # every pixel = bias (Lab colorization)
    slow_model(path, depth=8, width=32)               # heavy enough to be killed mid-run

All have a dynamic batch dimension unless ``fixed_batch`` is given, dynamic H/W when
``dynamic_size``, and metadata from ``p2p.runtime.metadata.ModelMetadata``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from p2p.runtime.metadata import ModelMetadata


def metadata(**overrides) -> ModelMetadata:
    values = dict(direction="AtoB", image_size=32, size_multiple=32, dynamic_size=False,
                  color_space="rgb", in_channels=3, out_channels=3, norm_mode="per-image")
    values.update(overrides)
    if values["dynamic_size"] and "size_multiple" not in overrides:
        values["size_multiple"] = 8
    return ModelMetadata(**values)


def build(path, layers, meta: ModelMetadata, fixed_batch: int | None = None) -> Path:
    """``layers``: [(weight (O, I, k, k), bias (O,), activation None|'Tanh'|'Relu'), ...]."""
    s = meta.image_size
    h, w = ("H", "W") if meta.dynamic_size else (s, s)
    n = fixed_batch or "N"
    x = helper.make_tensor_value_info(meta.input_name, TensorProto.FLOAT, [n, meta.in_channels, h, w])
    y = helper.make_tensor_value_info(meta.output_name, TensorProto.FLOAT,
                                      [n, meta.out_channels, h, w])
    nodes, inits, cur = [], [], meta.input_name
    for i, (weight, bias, act) in enumerate(layers):
        k = weight.shape[-1]
        inits += [numpy_helper.from_array(np.asarray(weight, np.float32), f"w{i}"),
                  numpy_helper.from_array(np.asarray(bias, np.float32), f"b{i}")]
        last = i == len(layers) - 1
        out = meta.output_name if last and act is None else f"c{i}"
        nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [out],
                                      pads=[k // 2] * 4, kernel_shape=[k, k]))
        cur = out
        if act is not None:
            out = meta.output_name if last else f"a{i}"
            nodes.append(helper.make_node(act, [cur], [out]))
            cur = out
    return save_model(helper.make_graph(nodes, "p2p_test", [x], [y], inits), meta, path)


def save_model(graph, meta: ModelMetadata, path) -> Path:
    """``graph`` as a checked opset-17 model carrying ``meta``, written to ``path``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="p2p-tests")
    model.ir_version = 8
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def identity_model(path, fixed_batch=None, **meta) -> Path:
    m = metadata(**meta)
    weight = np.zeros((m.out_channels, m.in_channels, 1, 1), np.float32)
    for c in range(min(m.in_channels, m.out_channels)):
        weight[c, c] = 1.0
    return build(path, [(weight, np.zeros(m.out_channels), None)], m, fixed_batch)


def conv_model(path, seed: int = 0, fixed_batch=None, **meta) -> Path:
    m = metadata(**meta)
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.3, (m.out_channels, m.in_channels, 3, 3))
    return build(path, [(weight, rng.normal(0, 0.1, m.out_channels), "Tanh")], m, fixed_batch)


def constant_model(path, bias, **meta) -> Path:
    m = metadata(**meta)
    weight = np.zeros((m.out_channels, m.in_channels, 1, 1), np.float32)
    return build(path, [(weight, np.asarray(bias, np.float32), None)], m)


def slow_model(path, depth: int = 8, width: int = 32, **meta) -> Path:
    m = metadata(**meta)
    rng = np.random.default_rng(0)
    chans = [m.in_channels] + [width] * (depth - 1) + [m.out_channels]
    layers = [(rng.normal(0, 0.1, (o, i, 3, 3)), np.zeros(o), "Relu" if j < depth - 1 else "Tanh")
              for j, (i, o) in enumerate(zip(chans, chans[1:]))]
    return build(path, layers, m)


def reference_conv_tanh(path, x: np.ndarray) -> np.ndarray:
    """numpy reference for ``conv_model``: the same weights, read back from the file."""
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, b = init["w0"].astype(np.float64), init["b0"].astype(np.float64)
    k = w.shape[-1]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (k // 2,) * 2, (k // 2,) * 2))
    n, _, h, wd = x.shape
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + h, j:j + wd])
    return np.tanh(out + b[None, :, None, None])


def norm_model(path, seed: int = 0, width: int = 8, **meta) -> Path:
    """3x3 conv -> per-image normalisation (InstanceNormalization: each image on its own
    statistics, as p2p exports BatchNorm) -> ReLU -> 3x3 conv -> 3x3 conv -> tanh: a tiny
    translation-invariant generator whose output depends on the statistics of what it sees."""
    m = metadata(**meta)
    rng = np.random.default_rng(seed)
    s = m.image_size
    h, w = ("H", "W") if m.dynamic_size else (s, s)
    x = helper.make_tensor_value_info(m.input_name, TensorProto.FLOAT, ["N", m.in_channels, h, w])
    y = helper.make_tensor_value_info(m.output_name, TensorProto.FLOAT,
                                      ["N", m.out_channels, h, w])
    arrays = {"w0": rng.normal(0, 0.4, (width, m.in_channels, 3, 3)),
              "b0": np.zeros(width), "scale": np.ones(width), "bias": rng.normal(0, 0.2, width),
              "w1": rng.normal(0, 0.2, (width, width, 3, 3)), "b1": np.zeros(width),
              "w2": rng.normal(0, 0.2, (m.out_channels, width, 3, 3)),
              "b2": rng.normal(0, 0.1, m.out_channels)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    conv = dict(pads=[1] * 4, kernel_shape=[3, 3])
    nodes = [helper.make_node("Conv", [m.input_name, "w0", "b0"], ["c0"], **conv),
             helper.make_node("InstanceNormalization", ["c0", "scale", "bias"], ["n0"]),
             helper.make_node("Relu", ["n0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], **conv),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], **conv),
             helper.make_node("Tanh", ["c2"], [m.output_name])]
    return save_model(helper.make_graph(nodes, "p2p_test_norm", [x], [y], inits), m, path)
