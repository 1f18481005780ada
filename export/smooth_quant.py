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

A channel far above all others (one or two of the 1,536 GELU outputs feeding MiniLM's FFN
down-projections, 4-6x the 99th percentile) is better taken out of int8 altogether than
smoothed: ``smooth_model(..., outlier_ratio=...)`` zeroes it in the int8 path and adds its exact
contribution back with a tiny fp32 MatMul (LLM.int8()'s decomposition, with the channels fixed
at calibration instead of found per call). Where that activation is ``GELU(x @ W + b)`` (BERT's
FFN), the channels are zeroed in the up-projection's columns instead (GELU(0) = 0) and recomputed
in fp32 from its input: no ``Mul``/``Gather`` over the wide [tokens, 1536] activation (MiniLM-L6
int8 ~1% faster, same accuracy).
"""
from __future__ import annotations

import logging
from typing import Any, Collection, Sequence

import numpy as np

log = logging.getLogger(__name__)

ELEMENTWISE = {"Gelu", "FastGelu", "Erf", "Div", "Mul", "Add", "Sub", "Tanh", "Pow", "Sigmoid", "Relu", "Sqrt"}
MAX_ACTIVATION_NODES = 8  # GELU exported as x * 0.5 * (1 + erf(x / sqrt 2)) is 5 nodes
SCALE_RANGE = (1e-2, 1e3)  # keeps a dead channel (max 0) or a huge one from producing inf/0 weights
FP32_SUFFIX = "_fp32_outliers"  # node-name suffix of the outlier side-path MatMuls, which stay fp32


# ops whose input 0 is multiplied by a constant weight in input 1 ([K, N]), which dynamic quantization
# turns into int8: MatMul, and ORT's fused Attention (its packed Q/K/V projection, [hidden, 3·hidden])
WEIGHTED_OPS = {("", "MatMul"), ("ai.onnx", "MatMul"), ("com.microsoft", "Attention")}


def smoothable_matmuls(model: Any) -> list[Any]:
    """Nodes of :data:`WEIGHTED_OPS` with a constant weight (the ones dynamic quantization turns into int8)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if (n.domain, n.op_type) in WEIGHTED_OPS and len(n.input) > 1
            and n.input[1] in inits and n.input[0] not in inits]


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


def layernorm_outputs(model: Any) -> set[str]:
    """Smoothable MatMul inputs that a LayerNormalization writes: where a transformer's outlier
    channels live (LN's gain amplifies a few channels in every token), and what SmoothQuant
    smooths in its paper. MiniLM-L6, measured: smoothing the attention-output and FFN
    down-projection inputs as well costs a ``Mul`` each for no accuracy once the down-projection's
    outlier channels are split off (held-back min 0.9955 with, 0.9963 without)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.input[0] for n in smoothable_matmuls(model) if "LayerNorm" in producer.get(n.input[0], "")}


def outlier_channels(maxima: np.ndarray, ratio: float) -> np.ndarray:
    """Input channels whose calibration maximum exceeds ``ratio`` x the 99th percentile of all
    channels' maxima (MiniLM-L6: one or two of 1,536 in the FFN inputs of the first layers)."""
    return np.flatnonzero(maxima > ratio * np.percentile(maxima, 99))


def _scalar_constants(model: Any) -> set[str]:
    """Tensors that are single-element constants (initializers or ``Constant`` outputs): the only
    non-activation inputs an elementwise activation may have for its channels to be sliced."""
    from onnx import numpy_helper

    names = {i.name for i in model.graph.initializer if int(np.prod(i.dims)) == 1}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            if numpy_helper.to_array(n.attribute[0].t).size == 1:
                names.add(n.output[0])
    return names


def constant_value(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, or an ``Identity`` of one (exporters alias
    equal biases, e.g. a random model's zeros, that way)."""
    from onnx import numpy_helper

    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return numpy_helper.to_array(inits[name])


def _up_projection(model: Any, act: str, inits: dict[str, Any], consumers: dict[str, list[Any]],
                   width: int) -> tuple[Any, Any, str, np.ndarray, list[Any]] | None:
    """``(MatMul, bias Add, bias input, bias, activation nodes)`` when ``act`` is ``f(x @ W + b)``
    with ``W`` a constant used nowhere else, ``b`` a constant and ``f`` a short chain of elementwise
    ops on scalar constants (GELU, exported or fused): then zeroing columns of ``W`` and ``b``
    makes ``act``'s channels f(0) (0 for GELU/ReLU) without a ``Mul``; the result stays exact for any
    ``f``, as the down-projection's rows for those channels are zero. None for any other shape."""
    producer = {o: n for n in model.graph.node for o in n.output}
    scalars = _scalar_constants(model)
    chain: list[Any] = []
    frontier, pre = [act], None
    while frontier:
        t = frontier.pop()
        node = producer.get(t)
        if node is None:  # a graph input or a per-channel constant: not sliceable to the outlier columns
            return None
        if any(node is c for c in chain):
            continue
        if node.op_type == "Add" and len(node.input) == 2 and any(
                i not in scalars and constant_value(i, inits, producer) is not None for i in node.input):
            pre = pre or node
            if pre is not node:
                return None
            continue
        if node.op_type not in ELEMENTWISE or len(chain) >= MAX_ACTIVATION_NODES:
            return None
        chain.append(node)
        frontier += [i for i in node.input if i not in scalars]
    if pre is None or not chain:
        return None
    bias_name = next(i for i in pre.input if i not in scalars and constant_value(i, inits, producer) is not None)
    bias = constant_value(bias_name, inits, producer)
    x = next(i for i in pre.input if i != bias_name)
    mm = producer.get(x)
    if mm is None or mm.op_type != "MatMul" or mm.input[1] not in inits or mm.input[0] in inits:
        return None
    w = inits[mm.input[1]]
    if list(w.dims)[-1:] != [width] or list(bias.shape) != [width] or len(w.dims) != 2:
        return None
    inner = {o for n in chain for o in n.output} - {act}
    if (len(consumers.get(x, [])) != 1 or len(consumers[mm.input[1]]) != 1
            or any(all(c is not n for n in chain) for o in inner | {pre.output[0]} for c in consumers.get(o, []))):
        return None
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    return mm, pre, bias_name, bias, sorted(chain, key=lambda n: order[id(n)])


def smooth_model(model: Any, maxima: dict[str, np.ndarray], alpha: float | None,
                 outlier_ratio: float | None = None, smooth_only: Collection[str] | None = None) -> Any:
    """A copy of ``model`` with SmoothQuant scales folded in (same fp32 outputs up to rounding).

    Only the activations in ``maxima`` are touched, and only those in ``smooth_only`` (default:
    all) are smoothed; ``alpha=None`` smooths nothing. Smoothing costs a ``Mul`` on its input.

    With ``outlier_ratio``, in MatMuls whose output is narrower than their input (the FFN's
    down-projection: the side path's ``Add`` runs over the output, so on an up-projection it costs
    as much as the ``Mul``; MiniLM-L6 int8 +1% time for no accuracy), the few channels
    :func:`outlier_channels` finds leave the int8 path
    altogether (LLM.int8()-style decomposition): the ``Mul`` zeroes them, their weight rows are
    zeroed in the MatMul that gets quantized, and a side path ``Gather`` -> small fp32 ``MatMul``
    (named ``*`` + :data:`FP32_SUFFIX`, for the quantizer to skip) adds their exact contribution
    back after the bias. One channel 4x larger than the rest otherwise sets both the activation's
    int8 step and, smoothed into the weights, every output channel's weight step.

    When that input is an elementwise activation of a biased up-projection (:func:`_up_projection`),
    the up-projection's columns do the zeroing and the side path starts from its input
    (:func:`_fold_outliers`), so the wide activation gets no ``Mul`` or ``Gather``.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, n in enumerate(out.graph.node):
        n.name = n.name or f"edgemp_node_{i}"  # new nodes are placed by their neighbour's name
    inits = {i.name: i for i in out.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in out.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    matmuls = smoothable_matmuls(out)
    before: dict[str, list[Any]] = {}  # node name -> new nodes placed right before it (the input's Mul)
    after: dict[str, list[Any]] = {}  # node name -> an outlier side path, placed right after it
    folds: list[tuple[str, np.ndarray, tuple]] = []  # (down-projection, outliers, its up-projection's pattern)
    for act in sorted({n.input[0] for n in matmuls}):
        if act not in maxima:
            continue
        users = [n for n in matmuls if n.input[0] == act]  # in graph order
        if any(len(consumers[n.input[1]]) != 1 for n in users):
            log.debug("skip %s: a weight is shared with another node", act)
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in users]  # [K, N] each
        if any(w.ndim != 2 or w.shape[0] != maxima[act].shape[0] for w in weights):
            continue
        outliers = np.zeros(0, int)
        if outlier_ratio is not None and all(w.shape[1] < w.shape[0] for w in weights):
            outliers = outlier_channels(maxima[act], outlier_ratio)
        smooth = alpha is not None and (smooth_only is None or act in smooth_only)
        if not smooth and not len(outliers):
            continue
        fold = _up_projection(out, act, inits, consumers, len(maxima[act])) if len(outliers) else None
        inliers = np.ones(len(maxima[act]), bool)
        inliers[outliers] = False
        s = np.ones(len(inliers))
        if smooth:
            x_max = np.maximum(np.where(inliers, maxima[act], 0.0), 1e-5)
            w_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0) * inliers, 1e-5)  # [K]
            s = np.clip(x_max ** alpha / w_max ** (1 - alpha), *SCALE_RANGE)
        smoothed, picked = act, f"{act}_outliers"
        head = before.setdefault(users[0].name, [])
        if smooth or fold is None:  # a folded outlier needs no Mul: its up-projection column is zero
            inv_name, smoothed = f"{act}_smoothquant_inv", f"{act}_smoothquant"
            inv = np.where(inliers, 1.0 / s, 0.0).astype(np.float32)  # outlier channels: 0, they take the side path
            out.graph.initializer.append(numpy_helper.from_array(inv, inv_name))
            head.append(helper.make_node("Mul", [act, inv_name], [smoothed], name=f"{act}_SmoothQuantMul"))
        if fold is not None:
            folds.append((users[0].name, outliers, fold))
        elif len(outliers):
            idx = f"{act}_outlier_idx"
            out.graph.initializer.append(numpy_helper.from_array(outliers.astype(np.int64), idx))
            head.append(helper.make_node("Gather", [act, idx], [picked], name=f"{act}_OutlierGather", axis=-1))
        for n, w in zip(users, weights):
            w_int8 = (w * (s * inliers)[:, None]).astype(np.float32)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(w_int8, n.input[1]))
            n.input[0] = smoothed
            if not len(outliers):
                continue
            # add the outliers back after the bias Add when there is one: ORT fuses MatMul + bias
            # into its int8 kernels only when the Add follows the MatMul directly
            anchor, nxt = n, consumers.get(n.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Add" and any(i in inits for i in nxt[0].input):
                anchor = nxt[0]
            w_name, total = f"{n.input[1]}_outlier_rows", anchor.output[0]
            out.graph.initializer.append(numpy_helper.from_array(w[outliers].astype(np.float32), w_name))
            anchor.output[0] = f"{total}_int8_part"
            after[anchor.name] = [
                helper.make_node("MatMul", [picked, w_name], [f"{total}_outlier_part"], name=f"{n.name}{FP32_SUFFIX}"),
                helper.make_node("Add", [anchor.output[0], f"{total}_outlier_part"], [total],
                                 name=f"{n.name}_OutlierAdd")]
    for user, outliers, fold in folds:  # after smoothing: the weights are final
        before[user].extend(_fold_outliers(out, inits, outliers, *fold))
    if before:
        nodes = []
        for node in out.graph.node:
            nodes += [*before.get(node.name, []), node, *after.get(node.name, [])]
        del out.graph.node[:]
        out.graph.node.extend(nodes)
    return out


def _fold_outliers(model: Any, inits: dict[str, Any], outliers: np.ndarray, mm: Any, bias_add: Any,
                   b_name: str, b: np.ndarray, chain: list[Any]) -> list[Any]:
    """Zero the ``outliers`` columns of the up-projection ``mm`` (weight and bias) so its activation
    is 0 there in the int8 path, and return the nodes that compute those channels exactly in fp32
    from the up-projection's input: small MatMul (named ``*`` + :data:`FP32_SUFFIX`) + bias + a
    copy of the activation ``chain``, writing ``<activation>_outliers`` for the down side path."""
    from onnx import helper, numpy_helper

    w_name = mm.input[1]
    w, b = numpy_helper.to_array(inits[w_name]).copy(), b.copy()
    act = chain[-1].output[0]
    cols, cols_b = f"{w_name}_outlier_cols", f"{b_name}_outlier_cols"
    model.graph.initializer.extend([numpy_helper.from_array(w[:, outliers].astype(np.float32), cols),
                                    numpy_helper.from_array(b[outliers].astype(np.float32), cols_b)])
    w[:, outliers], b[outliers] = 0.0, 0.0
    inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))
    # a bias of its own: exporters alias equal biases (a random model's zeros) to one initializer
    own_b = f"{bias_add.name}_bias_outliers_zeroed"
    model.graph.initializer.append(numpy_helper.from_array(b, own_b))
    bias_add.input[list(bias_add.input).index(b_name)] = own_b
    rename = {bias_add.output[0]: f"{bias_add.output[0]}_outliers", act: f"{act}_outliers"}
    rename.update({o: f"{o}_outliers" for n in chain for o in n.output})
    nodes = [helper.make_node("MatMul", [mm.input[0], cols], [f"{mm.output[0]}_outliers"],
                              name=f"{mm.name}{FP32_SUFFIX}"),
             helper.make_node("Add", [f"{mm.output[0]}_outliers", cols_b], [rename[bias_add.output[0]]],
                              name=f"{bias_add.name}_outliers")]
    for n in chain:
        copy = helper.make_node(n.op_type, [rename.get(i, i) for i in n.input], [rename[o] for o in n.output],
                                name=f"{n.name}_outliers", domain=n.domain)
        copy.attribute.extend(n.attribute)
        nodes.append(copy)
    return nodes
