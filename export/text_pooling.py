"""Mean pooling (and L2 normalisation) inside the exported graph, as an extra output.

The runtime can pool the ``[batch, tokens, hidden]`` states in numpy (:func:`edgemp.runtime.text.pool`),
but at batch 1 that runs right after ONNX Runtime has streamed the model's weights through the caches,
where every numpy call costs tens of microseconds: MiniLM-L6, one 128-token text, 1 thread, pooling
took ~150 µs after a run against ~20 µs warm. Six small nodes at the end of the graph do the same
sum while the states are still in cache (int8 end to end 12.21 -> 11.79 ms, fp32 alike). The graph
keeps its raw output (verification and V2 clients read it); the pooled one is recorded in the
spec's ``extra["pooled_output"]``, and the runtime reads it when it is there.

Same formula as :func:`~edgemp.runtime.text.pool`: masked sum ``mask @ states``; with ``normalize``,
``sum / max(||sum||, 1e-12 · count)`` (the mean's division folds into the norm's); without,
``sum / max(count, 1e-9)``. Only mean pooling is built in the graph (CLS and max stay in numpy).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

POOLED_OUTPUT = "sentence_embedding"  # the graph output the pooled embeddings get
NODE_PREFIX = "edgemp_pool/"  # names of the pooling nodes and their constants


def add_pooled_output(model: Any, hidden: str, mask: str, normalize: bool) -> tuple[Any, str | None]:
    """``(copy of model with mean-pooled [batch, hidden] embeddings as output POOLED_OUTPUT, its name)``;
    ``(model, None)`` when ``hidden`` or ``mask`` is not a graph output / input, or the name is taken."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    names = {o.name for o in g.output} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    if hidden not in {o.name for o in g.output} or mask not in {i.name for i in g.input} or POOLED_OUTPUT in names:
        return model, None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    p = NODE_PREFIX
    consts = {f"{p}axis1": np.asarray([1], np.int64), f"{p}last": np.asarray([-1], np.int64),
              f"{p}eps": np.asarray(1e-12 if normalize else 1e-9, np.float32)}
    nodes = [
        helper.make_node("Cast", [mask], [f"{p}mask"], name=f"{p}Cast", to=TensorProto.FLOAT),  # [B, T]
        helper.make_node("Unsqueeze", [f"{p}mask", f"{p}axis1"], [f"{p}mask3"], name=f"{p}Unsqueeze"),  # [B, 1, T]
        helper.make_node("MatMul", [f"{p}mask3", hidden], [f"{p}sum"], name=f"{p}MatMul"),  # [B, 1, H]
        helper.make_node("ReduceSum", [f"{p}mask3", f"{p}last"], [f"{p}count"], name=f"{p}Count", keepdims=1),
    ]
    if normalize:  # sum / max(||sum||, eps * count)
        nodes += [helper.make_node("ReduceL2", [f"{p}sum"], [f"{p}norm"], name=f"{p}Norm", axes=[-1], keepdims=1),
                  helper.make_node("Mul", [f"{p}count", f"{p}eps"], [f"{p}floor"], name=f"{p}Floor"),
                  helper.make_node("Max", [f"{p}norm", f"{p}floor"], [f"{p}denominator"], name=f"{p}Max")]
    else:  # sum / max(count, eps)
        nodes.append(helper.make_node("Max", [f"{p}count", f"{p}eps"], [f"{p}denominator"], name=f"{p}Max"))
    nodes += [helper.make_node("Div", [f"{p}sum", f"{p}denominator"], [f"{p}mean3"], name=f"{p}Div"),
              helper.make_node("Squeeze", [f"{p}mean3", f"{p}axis1"], [POOLED_OUTPUT], name=f"{p}Squeeze")]
    opset = max((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset >= 18:  # ReduceL2 took axes as an attribute until opset 18
        norm = next((n for n in nodes if n.op_type == "ReduceL2"), None)
        if norm is not None:
            del norm.attribute[:]
            norm.attribute.append(helper.make_attribute("keepdims", 1))
            norm.input.append(f"{p}last")
    if opset < 13:  # ReduceSum / Unsqueeze / Squeeze took axes as attributes until opset 13
        log.info("opset %d: pooling stays in the runtime", opset)
        return model, None
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    out.graph.node.extend(nodes)
    width = next(o for o in g.output if o.name == hidden).type.tensor_type.shape.dim
    dims = [width[0].dim_param or width[0].dim_value, width[-1].dim_param or width[-1].dim_value] if len(width) == 3 \
        else None
    out.graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, dims))
    return out, POOLED_OUTPUT


def remove_pooled_output(model: Any) -> Any:
    """``model`` without what :func:`add_pooled_output` added (quantization and the fusions see the encoder only)."""
    import onnx

    if not any(n.name.startswith(NODE_PREFIX) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for field, keep in ((g.node, lambda x: not x.name.startswith(NODE_PREFIX)),
                        (g.initializer, lambda x: not x.name.startswith(NODE_PREFIX)),
                        (g.output, lambda x: x.name != POOLED_OUTPUT)):
        kept = [x for x in field if keep(x)]
        del field[:]
        field.extend(kept)
    return out


def pool_for_spec(model: Any, spec: Any) -> tuple[Any, Any]:
    """``(model, spec)`` with the pooled output added and named in ``spec.extra["pooled_output"]`` when
    ``spec`` (a :class:`~edgemp.text_spec.TextModelSpec`) mean-pools a feature-extraction model;
    otherwise the model unchanged and the spec without that entry."""
    from dataclasses import replace

    extra = {k: v for k, v in spec.extra.items() if k != "pooled_output"}
    name = None
    if spec.task == "feature-extraction" and spec.pooling == "mean" and "attention_mask" in spec.input_names:
        model, name = add_pooled_output(remove_pooled_output(model), spec.output_name, "attention_mask",
                                        spec.normalize)
    if name is not None:
        extra["pooled_output"] = name
    return model, replace(spec, extra=extra)
