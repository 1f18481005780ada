"""Model hyperparameters: the part of a checkpoint's config.json that rebuilds the model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from itertools import chain

from edgemp.errors import CheckpointError
from edgemp.spec import TASKS, ModelSpec, OutputSpec

FAMILIES = ("gin", "gine", "gcn", "sage", "gat", "mpnn", "ggnn")
EDGE_FAMILIES = ("gine", "mpnn")  # families whose messages read edge features
SHARED_WEIGHT_FAMILIES = ("mpnn", "ggnn")  # one layer reused every round
DENSE_FAMILIES = ("gin", "gcn", "sage", "gat", "ggnn")  # messages depend on nodes only
READOUTS = ("sum", "mean", "max")
AGGRS = ("sum", "mean", "max")
# Inclusive (min, max) of each integer field. config.json is input like any other file: without
# caps, num_rounds=10**9 loops for hours and node_features=10**12 asks for terabytes before the
# weights are even read. The caps sit far above real models (molecular GNNs use 30-200 features,
# 64-1024 hidden units and 2-10 rounds; bag-of-words graphs reach ~10**4 features).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "node_features": (1, 2**16),
    "edge_features": (0, 2**16),
    "out_dim": (1, 2**16),
    "hidden": (1, 2**14),
    "num_rounds": (1, 64),  # every round is unrolled into the exported graph
    "heads": (1, 2**14),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (weights come from safetensors).

    ``out_dim`` is the number of targets (regression) or classes (classification).
    ``aggr`` applies to the families with a choice (sage, mpnn); ``heads`` to gat.
    """

    family: str
    task: str
    node_features: int
    edge_features: int
    out_dim: int = 1
    hidden: int = 64
    num_rounds: int = 3
    aggr: str = "mean"
    readout: str = "sum"
    heads: int = 4
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    featurizer: str = ""  # NAME/VERSION from edgemp.chem when trained on featurized molecules

    def __post_init__(self) -> None:
        # The first problem only: later checks rely on earlier ones (hidden % heads needs ints, heads >= 1).
        problem = next(chain(self._choice_problems(), self._number_problems()), None)
        if problem is not None:
            raise CheckpointError(f"invalid model config: {problem}")

    def _choice_problems(self):
        if self.family not in FAMILIES:
            yield f"could not resolve family {self.family!r} among choices {list(FAMILIES)}"
        if self.task not in TASKS:
            yield f"unknown task {self.task!r}; expected one of {list(TASKS)}"
        if self.readout not in READOUTS:
            yield f"unknown readout {self.readout!r}; expected one of {list(READOUTS)}"
        if self.aggr not in AGGRS:
            yield f"unknown aggregation {self.aggr!r}; expected one of {list(AGGRS)}"
        if not all(isinstance(c, str) for c in self.class_names):
            yield f"class_names must be strings, got {list(self.class_names)[:5]}"
        if not isinstance(self.featurizer, str):
            yield f"featurizer must be a string, got {self.featurizer!r}"

    def _number_problems(self):
        for name, (lo, hi) in INT_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                yield f"{name} must be an integer, got {value!r}"
            elif value < lo:
                yield f"{name} must be >= {lo}, got {value}"
            elif value > hi:
                yield f"{name} must be <= {hi}, got {value} (edgemp's cap, far above any real model)"
        if self.family in EDGE_FAMILIES and self.edge_features < 1:
            yield f"family {self.family!r} needs edge features but edge_features={self.edge_features}"
        if self.family == "gat" and self.hidden % self.heads:
            yield f"gat hidden={self.hidden} is not divisible by heads={self.heads}"
        for name in ("target_mean", "target_std"):
            yield from _target_stat_problems(name, getattr(self, name), self.out_dim)

    @property
    def uses_edge_features(self) -> bool:
        return self.family in EDGE_FAMILIES

    def spec(self) -> ModelSpec:
        level = "node" if self.task.startswith("node_") else "graph"
        name = "logits" if self.task.endswith("classification") else "prediction"
        return ModelSpec(
            family=self.family,
            task=self.task,
            node_features=self.node_features,
            edge_features=self.edge_features if self.uses_edge_features else 0,
            num_rounds=self.num_rounds,
            outputs=(OutputSpec(name=name, level=level, width=self.out_dim),),
            target_mean=tuple(self.target_mean),
            target_std=tuple(self.target_std),
            class_names=tuple(self.class_names),
            featurizer=self.featurizer,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise CheckpointError("invalid model config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"invalid model config: unknown field(s) {sorted(unknown)}")
        kw = dict(d)
        for k in ("target_mean", "target_std", "class_names"):
            if k in kw:
                if not isinstance(kw[k], (list, tuple)):  # tuple: from to_dict() without a JSON trip
                    raise CheckpointError(f"invalid model config: {k} must be a list, got {type(kw[k]).__name__}")
                kw[k] = tuple(kw[k])
        try:
            return cls(**kw)
        except TypeError as e:
            raise CheckpointError(f"invalid model config: {e}") from e


def _target_stat_problems(name: str, values: tuple, out_dim: int):
    """target_mean / target_std: empty, or one finite number per output (std > 0: it divides)."""
    if not values:
        return
    if len(values) != out_dim:
        yield f"{name} has {len(values)} entries but out_dim is {out_dim}"
    elif not all(_is_finite_number(v) for v in values):
        yield f"{name} must hold finite numbers, got {list(values)[:5]}"
    elif name == "target_std" and min(values) <= 0:
        yield f"target_std must be > 0, got {list(values)[:5]}"


def _is_finite_number(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit literals)
        return False
