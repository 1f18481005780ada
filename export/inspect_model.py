"""``edgemp inspect``: what is inside an exported ONNX file, and where it can run."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgemp.export.checks import float_initializer_count
from edgemp.export.lint import LINT_TARGETS, lint_model
from edgemp.export.onnx_file import load_onnx, metadata, read_model_spec
from edgemp.spec import METADATA_KEY

_DTYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 9: "bool", 3: "int8", 2: "uint8"}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def inspect_onnx(path: str | Path) -> dict:
    """Metadata, inputs/outputs with dynamic axes, op counts, parameters, size, lints."""
    p = Path(path)
    model = load_onnx(p)
    spec = read_model_spec(model, p).to_json() if METADATA_KEY in metadata(model) else None
    return {
        "path": str(p),
        "file_bytes": p.stat().st_size,
        "edgemp": None if spec is None else __import__("json").loads(spec),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [{"name": i.name, "dtype": _DTYPES.get(i.type.tensor_type.elem_type, "?"), "shape": _dims(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "dtype": _DTYPES.get(o.type.tensor_type.elem_type, "?"), "shape": _dims(o)} for o in model.graph.output],
        "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "parameters": float_initializer_count(model),
        "lint": {t: lint_model(model, t).problems for t in LINT_TARGETS},
    }


def format_inspection(info: dict) -> str:
    lines = [f"{info['path']}  ({info['file_bytes'] / 1024:.1f} KiB, {info['parameters']} parameters)"]
    spec = info["edgemp"]
    if spec is None:
        lines.append("edgemp metadata: none (not an edgemp model)")
    else:
        m = spec["model"]
        lines.append(
            f"edgemp: family={m['family']} task={m['task']} K={m['num_rounds']} form={spec['form']}"
            f"{' max_nodes=' + str(spec['max_nodes']) if spec['form'] == 'dense' else ''} target={spec['target']} "
            f"precision={spec['precision']} opset={spec['opset']} version={spec['edgemp_version']}"
        )
        lines.append(f"  node_features={m['node_features']} edge_features={m['edge_features']} checkpoint_sha256={spec['checkpoint_sha256'][:16] or '-'}")
    lines.append("inputs:")
    lines += [f"  {i['name']}: {i['dtype']} {i['shape']}" for i in info["inputs"]]
    lines.append("outputs:")
    lines += [f"  {o['name']}: {o['dtype']} {o['shape']}" for o in info["outputs"]]
    lines.append("ops: " + ", ".join(f"{k}×{v}" for k, v in info["op_counts"].items()))
    for target, problems in info["lint"].items():
        lines.append(f"lint {target}: " + ("ok" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems[:3])))
    return "\n".join(lines)
