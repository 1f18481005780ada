"""What to export: an edgemp checkpoint, an in-memory model, or a user's own module.

Every source becomes an :class:`ExportSource`: the eval-mode module, the spec the runtime
will need, and provenance. Loading never unpickles code (see edgemp.models.checkpoint).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from edgemp.errors import CheckpointError, EdgempError, ExportError
from edgemp.spec import TASKS, ModelSpec, OutputSpec


@dataclass
class ExportSource:
    module: object  # torch.nn.Module in eval mode
    spec: ModelSpec
    checkpoint_sha256: str
    supports_dense: bool
    is_graphnet: bool


def from_graphnet(net, sha: str = "") -> ExportSource:
    from edgemp.models.config import DENSE_FAMILIES

    return ExportSource(net.eval(), net.cfg.spec(), sha, net.cfg.family in DENSE_FAMILIES, True)


def from_checkpoint(directory: str | Path) -> ExportSource:
    from edgemp.models.checkpoint import checkpoint_sha256, load_checkpoint

    net = load_checkpoint(directory)
    return from_graphnet(net, checkpoint_sha256(directory))


def resolve_source(model_or_checkpoint) -> ExportSource:
    if isinstance(model_or_checkpoint, ExportSource):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, Path)):
        from edgemp.export.chemprop_import import chemprop_source, is_chemprop_checkpoint

        if is_chemprop_checkpoint(model_or_checkpoint):  # a chemprop v2 best.pt / .ckpt file
            return chemprop_source(model_or_checkpoint)
        return from_checkpoint(model_or_checkpoint)
    from edgemp.models.net import GraphNet

    if isinstance(model_or_checkpoint, GraphNet):
        return from_graphnet(model_or_checkpoint)
    raise ExportError(
        f"cannot export a {type(model_or_checkpoint).__name__}: pass a checkpoint directory, a GraphNet, "
        "or use load_user_model() for your own module"
    )


def _import_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EdgempError(f"--model must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgempError(f"cannot import module {module_name!r} for --model: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise EdgempError(f"{module_name!r} has no callable {attr!r} for --model")
    return factory


def load_user_model(factory_path: str, weights: str | Path | None, output_names: tuple[str, ...] = ("prediction",)) -> ExportSource:
    """Build a user's module from ``package.module:factory`` and load its weights safely.

    The factory returns a ``torch.nn.Module`` whose ``forward`` takes schema-named tensors
    (``x``, ``edge_index``, optionally ``edge_attr``, ``node_graph``, ``num_graphs``) and
    returns one tensor (or a tuple/dict named by ``output_names``). It states its feature
    widths as attributes ``node_features`` and ``edge_features`` (0 or absent: none), and
    optionally ``task`` (default ``"regression"``) and ``output_levels`` (default graph).
    """
    from edgemp.models.checkpoint import load_state_dict_safely, load_weights_strict

    factory = _import_factory(factory_path)
    try:
        module = factory()
    except Exception as e:  # user code: report it as the user's problem, with its message
        raise EdgempError(f"--model factory {factory_path!r} raised {type(e).__name__}: {e}") from e
    import torch

    if not isinstance(module, torch.nn.Module):
        raise EdgempError(f"--model factory {factory_path!r} returned {type(module).__name__}, not a torch.nn.Module")
    node_features = getattr(module, "node_features", None)
    if not isinstance(node_features, int) or node_features < 1:
        raise EdgempError(
            f"the module from {factory_path!r} must state its node feature width as an int attribute 'node_features'"
        )
    edge_features = int(getattr(module, "edge_features", 0) or 0)
    takes = set(inspect.signature(module.forward).parameters)
    missing = {"x", "edge_index", "node_graph", "num_graphs"} - takes
    if missing:
        raise EdgempError(f"the module's forward must take schema-named arguments; missing {sorted(missing)}")
    if edge_features and "edge_attr" not in takes:
        raise EdgempError("the module states edge_features but its forward takes no 'edge_attr'")
    sha = ""
    if weights is not None:
        state = load_state_dict_safely(weights)
        load_weights_strict(module, state, str(weights))
        sha = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    task = getattr(module, "task", "regression")
    if task not in TASKS:
        raise EdgempError(f"module attribute task={task!r} is not one of {list(TASKS)}")
    module.eval()
    levels = dict(getattr(module, "output_levels", {}) or {})
    default_level = "node" if task.startswith("node_") else "graph"
    levels = {n: levels.get(n, default_level) for n in output_names}
    widths = _probe_output_widths(module, node_features, edge_features, output_names, levels)
    outputs = tuple(OutputSpec(n, levels[n], w) for n, w in zip(output_names, widths))
    spec = ModelSpec(
        family=f"custom:{factory_path}",
        task=task,
        node_features=node_features,
        edge_features=edge_features,
        num_rounds=int(getattr(module, "num_rounds", 0) or 0),
        outputs=outputs,
    )
    return ExportSource(module, spec, sha, False, False)


def _probe_output_widths(module, node_features: int, edge_features: int, names: tuple[str, ...],
                         levels: dict[str, str]) -> list[int]:
    """Each output's width W, from a 2-graph, 5-node batch; every output must be [G, W] or [N, W]."""
    import torch

    from edgemp.export.wrappers import outputs_as_tuple

    n, e = 5, 6
    kwargs = {
        "x": torch.randn(n, node_features),
        "edge_index": torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]]),
        "node_graph": torch.tensor([0, 0, 0, 1, 1]),
        "num_graphs": 2,
    }
    if edge_features:
        kwargs["edge_attr"] = torch.randn(e, edge_features)
    try:
        with torch.no_grad():
            outs = outputs_as_tuple(module(**kwargs), names)
    except Exception as e:  # user code
        raise CheckpointError(f"the module failed on a 2-graph test batch: {type(e).__name__}: {e}") from e
    if len(outs) != len(names):
        raise EdgempError(f"the module returned {len(outs)} outputs but {len(names)} output names were given")
    for name, out in zip(names, outs):
        _check_output_shape(name, out, levels[name], {"graph": 2, "node": n})
    return [int(o.shape[1]) for o in outs]


def _check_output_shape(name: str, out, level: str, rows: dict[str, int]) -> None:
    """The runtime splits every output by its first axis, so a scalar or a 3-D tensor cannot be served."""
    import torch

    if level not in rows:
        raise ExportError(f"output {name!r} has level {level!r}; expected one of {sorted(rows)}")
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"output {name!r} is a {type(out).__name__}, not a tensor")
    shape, axis = list(out.shape), "G" if level == "graph" else "N"
    if out.dim() != 2 or shape[0] != rows[level] or shape[1] < 1:
        raise ExportError(
            f"output {name!r} has shape {shape} on a test batch of 2 graphs and 5 nodes; a {level}-level output "
            f"must be [{axis}, W], one row per {level} ({rows[level]} here) and W >= 1")
