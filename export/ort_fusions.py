"""ONNX Runtime's transformer fusions for text graphs: fused attention, tanh GELU, Add chains as Sum,
and fused attention that skips its mask on unpadded inputs.

**Attention.** Exported BERT attention is ~20 small nodes per layer: three projections,
Reshape/Transpose of Q, K and V, QKᵀ, scale, mask Add, Softmax, attention·V, Transpose/Reshape
back. ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``) replaces them
with one ``com.microsoft.Attention`` holding the packed ``[hidden, 3·hidden]`` Q/K/V weight, which
dynamic quantization turns into ``QAttention``: one int8 GEMM for Q, K and V and a fused attention
kernel instead of Transposes and batched fp32 MatMuls. MiniLM-L6, 1 thread, 128 tokens, 400
interleaved rounds: int8 12.42 -> 12.09 ms. Only the attention fusion runs (LayerNorm stays
``LayerNormalization``; SkipLayerNormalization, slower on CPU, and BiasGelu, which would hide the
FFN's bias from the outlier fold, do not), with the raw ``[batch, tokens]`` attention mask, so any
padding pattern stays correct. The fused graph is checked against the original on real inputs;
a graph the fusion does not match, or whose outputs move, is returned unchanged.

**GELU.** BERT's exact GELU ``x·Φ(x)`` (erf) costs 130 µs per [128, 1536] activation on one
core; the tanh form (``FastGelu``) 101 µs, and differs by at most 5e-4, far below int8's own
rounding: MiniLM-L6 int8 ~1.8% faster, held-back accuracy unchanged (min cosine 0.99566 vs
0.99605, top-10 overlap 0.9732 vs 0.9725). Only the int8 path uses it: the fp32 export stays
the exact model.

**Add chains.** ``Add(Add(a, b), c)`` over three activations, where the inner sum feeds nothing
else, becomes one ``Sum(a, b, c)``: one pass over the [tokens, hidden] tensors and one kernel
launch instead of two. The int8 graph has five (the embeddings' word + type + position, and each
outlier side path's int8 part + fp32 part + residual): MiniLM-L6 int8, 1 thread, 128 tokens,
interleaved calls at the session, 0.3% and 0.8% faster in two runs on a shared machine (250 and
200 calls), embeddings bit for bit the same (ORT's ``Sum`` adds its inputs in order). Checked
like the attention fusion: a graph that will not load or whose outputs move is returned unchanged.

**Unpadded inputs.** ORT's CPU ``Attention``/``QAttention`` spend ~55 µs per MiniLM layer (128 tokens)
applying a mask even when it is all ones, which it always is for the runtime's batch-1 calls (one text
is fed unpadded). :func:`skip_unpadded_attention_mask` hands each fused node its mask sliced to one
column when no entry is 0, which the kernels read as no mask (plain dataflow, no ``If``): bit-identical
outputs; an ``If`` around each node measured MiniLM-L6 int8 12.10 -> 11.79 ms at the session and fused
fp32 30.49 -> 30.21 ms (1 thread, 250 interleaved rounds) and cost ~20 µs a layer of that itself.
Both the int8 graph and the fused fp32 export use it (the fp32 baseline stays the fastest fp32).
:func:`restore_attention_mask` undoes it before quantization. Tried and dropped: the unpadded branch as
three int8 GEMMs into ``MultiHeadAttention`` (its flash kernel): 727 vs 750 µs for one layer alone, but
no gain in the whole model (11.76 vs 11.71 ms); the merged-Q/K/V ``DynamicQuantizeMatMul`` into
``MultiHeadAttention`` or the unfused ops: 5-7% slower than ``QAttention`` per layer.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

ORT_OPTIMIZER_LOGGERS = ("onnxruntime.transformers", "onnx_model", "fusion_base", "fusion_attention")
# ORT optimizer fusion flags edgemp sets; each call turns on only the ones it needs (LayerNorm fusion
# stays on: older opsets export LayerNorm as ReduceMean/Sub/Pow/..., which the attention pattern expects fused)
FUSION_FLAGS = ("enable_attention", "enable_gelu", "enable_gelu_approximation", "enable_skip_layer_norm",
                "enable_embed_layer_norm", "enable_bias_skip_layer_norm", "enable_bias_gelu",
                "enable_qordered_matmul", "enable_rotary_embeddings")


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """ORT's optimizer warns that the model's producer is not PyTorch and logs every fusion."""
    loggers = [logging.getLogger(n) for n in ORT_OPTIMIZER_LOGGERS] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _optimized(model: Any, enable: Sequence[str], raw_mask: bool = True) -> Any:
    """``model`` after ORT's optimizer with only the fusion flags in ``enable`` on (a new proto;
    the optimizer edits the one it is given)."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opts = FusionOptions("bert")
    for flag in FUSION_FLAGS:
        setattr(opts, flag, flag in enable)
    opts.use_raw_attention_mask(raw_mask)
    with _quiet_optimizer():
        # num_heads / hidden_size 0: read from the graph's Reshape shapes; opt_level 0: fusions only
        out = optimize_model(copy, model_type="bert", num_heads=0, hidden_size=0, optimization_options=opts,
                             opt_level=0, use_gpu=False).model
    if not any(o.domain == "com.microsoft" for o in out.opset_import):  # save_model_to_file would add it
        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _count(model: Any, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type and n.domain == "com.microsoft")


def _outputs(model: Any, feeds: Sequence[dict[str, np.ndarray]],
             disabled_optimizers: Sequence[str] = ()) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]


def _checked_change(new: Any, old: Any, feeds: Sequence[dict[str, np.ndarray]], atol: float, refused: str,
                    disabled_optimizers: Sequence[str] = ()) -> float | None:
    """Largest absolute output change from ``old`` to ``new`` over ``feeds`` when it is within ``atol``;
    None, with a warning ending in ``refused``, when ``new`` will not load or run or moves an output more."""
    try:
        worst = max(float(np.abs(x - y).max()) for fa, fb in zip(_outputs(new, feeds, disabled_optimizers),
                                                                 _outputs(old, feeds, disabled_optimizers))
                    for x, y in zip(fa, fb))
    except Exception as e:  # a kernel that will not take the rewritten form
        log.warning("rewritten graph fails (%s: %s); %s", type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "", refused)
        return None
    if not worst <= atol:
        log.warning("rewritten graph moves outputs by %.3g (> %.3g); %s", worst, atol, refused)
        return None
    return worst


def fuse_attention(model: Any, feeds: Sequence[dict[str, np.ndarray]], atol: float = 1e-4) -> tuple[Any, int]:
    """``(model with fused self-attention, number of Attention nodes)``; ``(model, 0)`` when the
    fusion matches nothing or any output on ``feeds`` moves more than ``atol``."""
    if not feeds:
        raise ValueError("fuse_attention needs at least one input feed to check the fused graph against")
    try:
        fused = _optimized(model, ("enable_attention",))
    except Exception as e:  # the optimizer's pattern code raises many types on graphs it does not expect
        log.warning("attention fusion failed (%s: %s); the int8 model keeps the exported attention",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return model, 0
    n = _count(fused, "Attention") - _count(model, "Attention")
    if n <= 0:
        log.info("no self-attention matched ONNX Runtime's fusion; the graph stays as exported")
        return model, 0
    worst = _checked_change(fused, model, feeds, atol, "the int8 model keeps the exported attention")
    if worst is None:
        return model, 0
    log.info("fused %d self-attention blocks into com.microsoft.Attention (max output change %.2e)", n, worst)
    return fused, n


def approximate_gelu(model: Any) -> tuple[Any, int]:
    """``(model with every exact GELU as com.microsoft.FastGelu (tanh form), number replaced)``;
    ``(model, 0)`` when there is none (see the module docstring for when that is worth it)."""
    try:
        out = _optimized(model, ("enable_gelu", "enable_gelu_approximation"))
    except Exception as e:  # as in fuse_attention
        log.warning("GELU approximation failed (%s: %s); the int8 model keeps the exact GELU",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return model, 0
    n = _count(out, "FastGelu") - _count(model, "FastGelu")
    return (out, n) if n > 0 else (model, 0)


def sum_add_chains(model: Any, feeds: Sequence[dict[str, np.ndarray]], atol: float = 1e-5,
                   disabled_optimizers: Sequence[str] = ()) -> tuple[Any, int]:
    """``(model with each Add(Add(a, b), c) of activations as one Sum(a, b, c), number merged)``;
    ``(model, 0)`` when there is none, or the merged graph fails or moves an output on ``feeds`` by
    more than ``atol`` (run with ``disabled_optimizers``, as the runtime will run it: a different set
    of ORT fusions on the two graphs would compare different kernels, not the merge)."""
    import onnx

    if not feeds:
        raise ValueError("sum_add_chains needs at least one input feed to check the merged graph against")
    g = model.graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    graph_outputs = {o.name for o in g.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for x in n.input:
            consumers.setdefault(x, []).append(i)
    inner_of: dict[int, int] = {}  # outer Add's index -> the inner Add it absorbs (indices: names may be empty)
    for i, a in enumerate(g.node):
        users = consumers.get(a.output[0], []) if a.op_type == "Add" and not a.domain else []
        if len(users) != 1 or a.output[0] in graph_outputs or i in inner_of or i in inner_of.values():
            continue
        b = g.node[users[0]]
        others = [x for x in b.input if x != a.output[0]]
        # activations only: an Add with a constant is a bias (ORT fuses those with their MatMul/GELU),
        # and Sum takes float tensors only, which shape arithmetic on constants is not
        if b.op_type != "Add" or b.domain or users[0] in inner_of or users[0] in inner_of.values() or len(others) != 1 \
                or any(x in constants for x in [*a.input, *others]):
            continue
        inner_of[users[0]] = i
    if not inner_of:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    absorbed = set(inner_of.values())
    nodes = []
    for i, n in enumerate(out.graph.node):
        if i in absorbed:
            continue
        if i in inner_of:
            a = out.graph.node[inner_of[i]]
            other = next(x for x in n.input if x != a.output[0])
            n = onnx.helper.make_node("Sum", [*a.input, other], list(n.output), name=f"{n.name or a.output[0]}_sum3")
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    # fails on an Add chain over integer tensors, say, which Sum does not take
    worst = _checked_change(out, model, feeds, atol, "the graph keeps its Add chains", disabled_optimizers)
    if worst is None:
        return model, 0
    log.info("merged %d Add chains into Sum (max output change %.2e)", len(inner_of), worst)
    return out, len(inner_of)


MASK_INPUT = {"Attention": 3, "QAttention": 5}  # com.microsoft attention op -> index of its mask input
UNPADDED_SUFFIX = "_unpadded"


def _raw_mask_source(g: Any, mask: str) -> str | None:
    """The rank-2 graph input (the raw ``[batch, tokens]`` 0/1 attention mask) that ``mask`` is,
    directly or through one Cast; None for any other mask (key lengths, a mask built in the graph)."""
    inputs = {i.name: i for i in g.input}
    producer = next((n for n in g.node if mask in n.output), None)
    if producer is not None and producer.op_type == "Cast" and not producer.domain:
        mask = producer.input[0]
    elif producer is not None:
        return None
    graph_input = inputs.get(mask)
    if graph_input is None or len(graph_input.type.tensor_type.shape.dim) != 2:
        return None
    return mask


def skip_unpadded_attention_mask(model: Any, feeds: Sequence[dict[str, np.ndarray]], atol: float = 0.0,
                                 disabled_optimizers: Sequence[str] = ()) -> tuple[Any, int]:
    """``(model whose fused attention skips the mask when no token is padding, number of attention nodes)``.

    ONNX Runtime's CPU ``Attention``/``QAttention`` kernels turn a given mask into a ``[batch, tokens,
    tokens]`` float bias, copy it into every head's score matrix and accumulate the QKᵀ GEMM onto it,
    even when every token is real: a single text (the runtime feeds it unpadded) or a batch of equal
    lengths. The kernels read a ``[batch, 1]`` mask as "no mask" (ORT's ``MASK_2D_DUMMY``: one value
    per row broadcasts to no effect), so the mask each node gets is sliced to its first column when no
    entry is 0, and kept whole otherwise: ``mask[:, :k]`` with ``k = tokens - (tokens - 1) · all(mask >
    0)``, computed once for every layer. Plain dataflow, no ``If`` (edgemp graphs carry no control
    flow); the mask-free form adds no zeros, so outputs are the same bit for bit.

    Only nodes whose mask is the raw rank-2 graph input (or a Cast of it) change; ``(model, 0)`` when
    there is none, or the graph fails or moves an output on ``feeds`` by more than ``atol`` (feeds with
    and without padding check both forms).
    """
    import onnx
    from onnx import TensorProto, helper

    if not feeds:
        raise ValueError("skip_unpadded_attention_mask needs at least one input feed to check the graph against")
    g = model.graph

    def mask_of(n: Any) -> str:
        k = MASK_INPUT.get(n.op_type, -1) if n.domain == "com.microsoft" else -1
        return n.input[k] if 0 <= k < len(n.input) else ""

    targets = [i for i, n in enumerate(g.node)
               if mask_of(n) and len(n.output) == 1 and _raw_mask_source(g, mask_of(n))]
    sources = {_raw_mask_source(g, mask_of(g.node[i])) for i in targets}
    if not targets or len(sources) != 1:
        return model, 0
    source = sources.pop()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    p = f"{source}{UNPADDED_SUFFIX}"  # every name this adds starts with it: restore_attention_mask finds them
    zero_type = next(i for i in g.input if i.name == source).type.tensor_type.elem_type
    out.graph.initializer.extend([helper.make_tensor(f"{p}_zero", zero_type, [], [0]),
                                  helper.make_tensor(f"{p}_one", TensorProto.INT64, [1], [1]),
                                  helper.make_tensor(f"{p}_start", TensorProto.INT64, [1], [0])])
    length = [  # k = tokens - (tokens - 1) * all(mask > 0): 1 when nothing is padded, else every token
        helper.make_node("ReduceMin", [source], [f"{p}_min"], name=f"{p}_min", keepdims=0),
        helper.make_node("Greater", [f"{p}_min", f"{p}_zero"], [f"{p}_all"], name=f"{p}_all"),
        helper.make_node("Cast", [f"{p}_all"], [f"{p}_flag"], name=f"{p}_flag", to=TensorProto.INT64),
        helper.make_node("Shape", [source], [f"{p}_shape"], name=f"{p}_shape"),
        helper.make_node("Gather", [f"{p}_shape", f"{p}_one"], [f"{p}_tokens"], name=f"{p}_tokens", axis=0),
        helper.make_node("Sub", [f"{p}_tokens", f"{p}_one"], [f"{p}_extra"], name=f"{p}_extra"),
        helper.make_node("Mul", [f"{p}_extra", f"{p}_flag"], [f"{p}_dropped"], name=f"{p}_dropped"),
        helper.make_node("Sub", [f"{p}_tokens", f"{p}_dropped"], [f"{p}_k"], name=f"{p}_k"),
    ]
    sliced: dict[str, str] = {}  # mask tensor -> its sliced form (one Slice per distinct mask)
    nodes = []
    for i, n in enumerate(out.graph.node):
        if i == targets[0]:
            nodes.extend(length)
        if i in targets:
            mask = mask_of(n)
            if mask not in sliced:
                sliced[mask] = f"{p}_{mask}"
                nodes.append(helper.make_node("Slice", [mask, f"{p}_start", f"{p}_k", f"{p}_one"], [sliced[mask]],
                                              name=sliced[mask]))
            n.input[MASK_INPUT[n.op_type]] = sliced[mask]
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    worst = _checked_change(out, model, feeds, atol, "attention keeps its mask on unpadded inputs",
                            disabled_optimizers)
    if worst is None:
        return model, 0
    log.info("%d attention nodes skip the mask when no token is padding (max output change %.2e)", len(targets), worst)
    return out, len(targets)


def restore_attention_mask(model: Any) -> tuple[Any, int]:
    """The inverse of :func:`skip_unpadded_attention_mask`: every attention node takes its whole mask
    again and the nodes and constants it added go (quantization and the other fusions expect the
    exported form); ``(model, 0)`` when there is none."""
    import onnx

    slices = {n.output[0]: n.input[0] for n in model.graph.node
              if n.op_type == "Slice" and n.name.endswith(n.input[0]) and UNPADDED_SUFFIX + "_" in n.name}
    if not slices:
        return model, 0
    prefixes = {name[: name.index(UNPADDED_SUFFIX + "_") + len(UNPADDED_SUFFIX)] for name in slices}

    def added(name: str) -> bool:
        return any(name.startswith(prefix + "_") for prefix in prefixes)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, restored = [], 0
    for n in out.graph.node:
        if added(n.name) and all(added(o) for o in n.output):
            continue
        k = MASK_INPUT.get(n.op_type, -1) if n.domain == "com.microsoft" else -1
        if 0 <= k < len(n.input) and n.input[k] in slices:
            n.input[k] = slices[n.input[k]]
            restored += 1
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [i for i in out.graph.initializer if not added(i.name)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, restored
