"""SmoothQuant for dynamic int8: move activation outliers into the weights before quantizing.

Dynamic int8 quantizes each MatMul's input with ONE scale per tensor, chosen at run time from
its largest value. Transformer activations have a few outlier channels (tens of times larger
than the rest), so that one scale leaves the ordinary channels only a handful of int8 steps,
and some embeddings move far (MiniLM-L6: min cosine to fp32 0.987 on held-back texts).

SmoothQuant (Xiao et al., 2023) divides each input channel ``j`` by ``s_j`` and multiplies
row ``j`` of the weight by ``s_j``: ``(X / s) @ (s · W) == X @ W`` exactly in fp32, but the
activation range flattens and the weights (quantized per output channel, once, offline) take
the outliers. ``s_j = max|X_j|^α / max|W_j|^(1-α)``; ``max|X_j|`` comes from calibration
texts. The division is one ``Mul`` per distinct MatMul input (Q/K/V share theirs), an
elementwise op that costs little beside the matmuls.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

SCALE_RANGE = (1e-2, 1e3)  # keeps a dead channel (max 0) or a huge one from producing inf/0 weights


def smoothable_matmuls(model: Any) -> list[Any]:
    """MatMul nodes with a constant weight (the ones dynamic quantization turns into int8)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits and n.input[0] not in inits]


def activation_maxima(model: Any, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel ``max|x|`` of every smoothable MatMul input over ``feeds`` (ONNX Runtime, CPU)."""
    import onnx
    import onnxruntime as ort

    names = sorted({n.input[0] for n in smoothable_matmuls(model)})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, out in zip(names, sess.run(names, {k: v for k, v in feed.items() if k in inputs})):
            m = np.abs(out.reshape(-1, out.shape[-1])).max(axis=0)  # [K]
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima


def smooth_model(model: Any, maxima: dict[str, np.ndarray], alpha: float) -> Any:
    """A copy of ``model`` with SmoothQuant scales folded in (same fp32 outputs up to rounding)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    matmuls = smoothable_matmuls(out)
    weight_users: dict[str, int] = {}
    for n in out.graph.node:
        for i in n.input:
            weight_users[i] = weight_users.get(i, 0) + 1
    for act in sorted({n.input[0] for n in matmuls}):
        if act not in maxima:
            continue
        users = [n for n in matmuls if n.input[0] == act]
        if any(weight_users[n.input[1]] != 1 for n in users):
            log.debug("skip %s: a weight is shared with another node", act)
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in users]  # [K, N] each
        if any(w.ndim != 2 or w.shape[0] != maxima[act].shape[0] for w in weights):
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # [K]
        s = maxima[act].astype(np.float64) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        s = np.clip(s, *SCALE_RANGE)
        inv_name, smoothed = f"{act}_smoothquant_inv", f"{act}_smoothquant"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        first = min(i for i, n in enumerate(out.graph.node) if n in users)
        out.graph.node.insert(first, helper.make_node("Mul", [act, inv_name], [smoothed], name=f"{act}_SmoothQuantMul"))
        for n, w in zip(users, weights):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = smoothed
    return out
