"""OpenVINO graph rewrites applied at load time (``OpenVINOSession``): the up-convolutions
(ConvTranspose) as sub-pixel convolutions, where that is measured faster (see
``subpixel_deconvolutions``). Works on an ``openvino.Model`` in memory; the file is untouched.
"""

from __future__ import annotations

import numpy as np


def subpixel_deconvolutions(model) -> int:
    """Rewrite each ConvTranspose(kernel 4, stride 2, pad 1) as conv 2x2 -> 4 phases -> depth-to-space.

    Why: OpenVINO's CPU plugin has no BF16 kernel for ConvolutionBackpropData, so under the
    bf16 hint the U-Net's seven up-convolutions (over half of its 12.1 GFLOP) stay FP32 and
    BF16 barely pays. The same arithmetic as plain convolutions runs on the BF16 units.

    Output pixel (2m + a, 2n + b) of the transposed convolution only ever sees the 2x2 input
    window at rows (m - 1 + a, m + a), cols (n - 1 + b, n + b), through kernel taps
    rows (3 - a, 1 - a), cols (3 - b, 1 - b). So one convolution with a 2x2 kernel, padding 1
    and 4 * C_out channels (one group per phase (a, b)) computes every phase on an
    (H + 1) x (W + 1) grid; phase (a, b) is that grid shifted by (a, b); depth-to-space
    (blocks first) interleaves the phases. Exact up to float summation order.
    INT8 (QDQ) up-convolutions are rewritten only with fewer than ``INT8_LANES`` output
    channels (``_deconv_weights``): OpenVINO has INT8 deconvolution kernels, and rewriting
    all of them measured no faster; the last one (3 channels) is 4-5% of the model faster.
    Returns the number of layers rewritten; anything else is left as it is.
    """
    from openvino import opset13 as ops

    taps = ((3, 1), (2, 0))  # taps[a][t]: kernel row for phase a, window row t
    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ConvolutionBackpropData" or node.get_input_size() != 2:
            continue
        attrs = node.get_attributes()
        if (attrs["strides"], attrs["pads_begin"], attrs["pads_end"], attrs["dilations"],
                attrs["output_padding"], attrs["auto_pad"]) != (
                [2, 2], [1, 1], [1, 1], [1, 1], [0, 0], "explicit"):
            continue
        found = _deconv_weights(node.input_value(1).get_node())
        if found is None:
            continue
        w, rebuild = found  # w: [C_in, C_out, 4, 4], float or INT8
        c_in, c_out = w.shape[:2]
        phases = np.empty((2, 2, c_out, c_in, 2, 2), w.dtype)
        for a in range(2):
            for b in range(2):
                phases[a, b] = w[:, :, taps[a], :][:, :, :, taps[b]].transpose(1, 0, 2, 3)
        grid = ops.convolution(node.input_value(0),
                               rebuild(phases.reshape(4 * c_out, c_in, 2, 2)),
                               strides=[1, 1], pads_begin=[1, 1], pads_end=[1, 1],
                               dilations=[1, 1])
        shifted = []
        for a in range(2):
            for b in range(2):
                group = slice(((a * 2 + b) * c_out), ((a * 2 + b + 1) * c_out))
                start = [group.start, a, b]
                stop = [group.stop, -1 if a == 0 else np.iinfo(np.int64).max,
                        -1 if b == 0 else np.iinfo(np.int64).max]
                shifted.append(ops.slice(grid, np.array(start, np.int64),
                                         np.array(stop, np.int64), np.ones(3, np.int64),
                                         np.array([1, 2, 3], np.int64)))
        out = ops.depth_to_space(ops.concat(shifted, 1), "blocks_first", 2)
        out.set_friendly_name(node.get_friendly_name() + "/subpixel")
        node.output(0).replace(out.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


INT8_LANES = 16  # output channels one VNNI instruction fills (32-bit lanes of a zmm register)


def _constant(node) -> np.ndarray | None:
    """The float32 data behind a chain of Reshape/Convert/Unsqueeze over a Constant, or None."""
    while node.get_type_name() in ("Reshape", "Convert", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), np.float32)


def _deconv_weights(node):
    """(weights [C_in, C_out, 4, 4], rebuild) of an up-convolution that is worth rewriting,
    or None. Float weights are a Constant. INT8 weights (NNCF's QDQ file as OpenVINO reads
    it) are Constant(i8) -> Convert -> [Subtract(zero point)] -> Multiply(scale), zero point
    and scale per output channel (axis 1); the rewrite permutes the INT8 constant and tiles
    the scales, so the low-precision transformations still run the sub-pixel convolution in
    INT8 (exact: the same integer products). Only with < INT8_LANES output channels (issue
    21: the last up-convolution, 128 -> 3 channels, took 8.6% of INT8 time for 1.6% of the
    MACs on a Zen 4; as a sub-pixel convolution it has 12). ``rebuild(w2)`` makes the new
    weights for [4 * C_out, C_in, 2, 2] data."""
    from openvino import opset13 as ops

    if node.get_type_name() == "Constant":
        w = node.get_data()
        if w.ndim != 4 or list(w.shape[2:]) != [4, 4]:
            return None
        return w, ops.constant
    if node.get_type_name() != "Multiply":
        return None
    scale = _constant(node.input_value(1).get_node())
    inner = node.input_value(0).get_node()
    zero = None
    if inner.get_type_name() == "Subtract":
        zero = _constant(inner.input_value(1).get_node())
        if zero is None:
            return None
        inner = inner.input_value(0).get_node()
    if inner.get_type_name() != "Convert" or scale is None:
        return None
    q = inner.input_value(0).get_node()
    if q.get_type_name() != "Constant":
        return None
    w = q.get_data()
    if w.ndim != 4 or list(w.shape[2:]) != [4, 4] or w.dtype not in (np.int8, np.uint8):
        return None
    c_out = w.shape[1]
    if c_out >= INT8_LANES:
        return None

    def per_channel(v):  # a scalar or one value per output channel -> [4 * C_out, 1, 1, 1]
        v = v.reshape(-1)
        if v.size not in (1, c_out):
            return None
        return np.tile(np.broadcast_to(v, (c_out,)), 4).reshape(-1, 1, 1, 1).astype(np.float32)

    scale4 = per_channel(scale)
    zero4 = None if zero is None else per_channel(zero)
    if scale4 is None or (zero is not None and zero4 is None):
        return None

    def rebuild(data):
        x = ops.convert(ops.constant(data), np.float32)
        if zero4 is not None:
            x = ops.subtract(x, ops.constant(zero4))
        return ops.multiply(x, ops.constant(scale4))
    return w, rebuild
