"""The FP16 model: conversion of the FP32 graph, and an honest way to check it on a CPU.

onnxruntime's CPU provider has no FP16 kernels for these ops on x86: it wraps each "isolated
FP16 node" in casts and runs it in FP32, then drops the casts, so on a CPU the FP16 file only
shows the error of its FP16 weights and input, not of FP16 activations. ``emulate`` evaluates
the same file the way a GPU runs it (every FP16 tensor stored as FP16, each op accumulated in
FP32), which is what the FP16 PSNR bound is checked against.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from p2p.runtime.errors import ExportError

# Convolutions and pointwise ops run in FP16 (GPUs accumulate them in FP32 anyway).
FP16_OPS = {"Conv", "ConvTranspose", "Relu", "LeakyRelu", "Concat", "Identity"}
# Normalisation is a reduction over H x W (a sum of 65k values loses FP16 precision), and the
# output tanh decides the final pixel values: both stay FP32.
FP32_OPS = {"InstanceNormalization", "Tanh"}
FP16_MAX = 65504.0


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations where safe; FP16 input, FP32 output.

    The input is an 8-bit image scaled to [-1, 1]: FP16 keeps it to within 1/16 of a grey
    level, so feeding FP16 halves the upload and loses nothing; the first Conv is FP16 anyway.
    Casts are inserted where an FP32 op meets an FP16 one. An op not listed above is an error:
    a new op must be judged safe or not, not guessed.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    dtype = {i.name: TensorProto.FLOAT16 for i in g.input}
    for i in g.input:
        i.type.tensor_type.elem_type = TensorProto.FLOAT16
    converted, kept, casts, nodes = set(), set(), {}, []
    for node in g.node:
        if node.op_type in FP16_OPS:
            want = TensorProto.FLOAT16
        elif node.op_type in FP32_OPS:
            want = TensorProto.FLOAT
        else:
            raise ExportError(f"fp16: no rule for op {node.op_type}; add it to FP16_OPS or "
                              "FP32_OPS in export/fp16.py after checking it")
        for k, name in enumerate(node.input):
            if name in inits:
                # One initializer has one type: shared by an FP16 and an FP32 op it would be
                # wrong for one of them, whichever op comes first in the graph.
                if (name in converted and want == TensorProto.FLOAT) or \
                        (name in kept and want == TensorProto.FLOAT16):
                    raise ExportError(f"fp16: initializer {name} is shared by FP16 and FP32 ops")
                if want == TensorProto.FLOAT16 and name not in converted:
                    _init_to_fp16(inits[name])
                    converted.add(name)
                elif want == TensorProto.FLOAT:
                    kept.add(name)
            elif name and dtype.get(name, want) != want:
                if (name, want) not in casts:
                    suffix = "fp16" if want == TensorProto.FLOAT16 else "fp32"
                    casts[(name, want)] = f"{name}_as_{suffix}"
                    nodes.append(helper.make_node("Cast", [name], [casts[(name, want)]], to=want))
                node.input[k] = casts[(name, want)]
        for name in node.output:
            dtype[name] = want
        nodes.append(node)
    for out in g.output:  # the output is always FP32
        if dtype[out.name] != TensorProto.FLOAT:
            inner = out.name + "_fp16"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale FP32 types; shape inference recomputes them
    return m


def _init_to_fp16(t: onnx.TensorProto) -> None:
    if t.data_type != TensorProto.FLOAT:
        return
    a = numpy_helper.to_array(t)
    if a.size and abs(a).max() > FP16_MAX:
        raise ExportError(f"fp16: weight {t.name} has values beyond the FP16 range "
                          f"(max |w| = {abs(a).max():.3g})")
    t.CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))


# --- GPU-like evaluation on the CPU ------------------------------------------------------

_TORCH = {TensorProto.FLOAT: torch.float32, TensorProto.FLOAT16: torch.float16}


@torch.no_grad()
def emulate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Evaluate ``model`` with FP16 storage and FP32 accumulation (a GPU's FP16 arithmetic).

    Every op reads its inputs widened to FP32, computes in FP32 and rounds its output to the
    dtype the graph gives it, so each FP16 activation is rounded exactly where a GPU would.
    Only the ops a p2p generator has are known; anything else is an error.
    """
    g = model.graph
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    first = g.input[0]
    env[first.name] = torch.from_numpy(x).to(_TORCH[first.type.tensor_type.elem_type])
    for node in g.node:
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        ins = [env[i].float() if i else None for i in node.input]
        out_dtype = a["to"] if node.op_type == "Cast" else None
        y = _op(node.op_type, ins, a)
        env[node.output[0]] = y.to(_TORCH[out_dtype] if out_dtype else env[node.input[0]].dtype)
    return env[g.output[0].name].float().numpy()


def _op(op: str, ins: list, a: dict) -> torch.Tensor:
    x = ins[0]
    if op in ("Cast", "Identity"):
        return x
    if op == "Relu":
        return F.relu(x)
    if op == "LeakyRelu":
        return F.leaky_relu(x, a.get("alpha", 0.01))
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Concat":
        return torch.cat(ins, dim=a["axis"])
    if op == "InstanceNormalization":
        return F.instance_norm(x, weight=ins[1], bias=ins[2], eps=a.get("epsilon", 1e-5))
    if op in ("Conv", "ConvTranspose"):
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ExportError("fp16 emulation: auto_pad is unsupported")
        bias = ins[2] if len(ins) > 2 else None
        t, l, b, r = a.get("pads", [0, 0, 0, 0])
        common = dict(stride=a.get("strides", 1), dilation=a.get("dilations", 1),
                      groups=a.get("group", 1))
        if op == "Conv":
            return F.conv2d(F.pad(x, (l, r, t, b)), ins[1], bias, **common)
        if (t, l) != (b, r) or "output_shape" in a:
            raise ExportError("fp16 emulation: asymmetric ConvTranspose padding is unsupported")
        return F.conv_transpose2d(x, ins[1], bias, padding=(t, l),
                                  output_padding=a.get("output_padding", 0), **common)
    raise ExportError(f"fp16 emulation: no rule for op {op}")
