"""Model hyperparameters: the part of a checkpoint's config.json that rebuilds the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgemp.errors import CheckpointError
from edgemp.spec import TASKS, ModelSpec, OutputSpec

FAMILIES = ("gin", "gine", "gcn", "sage", "gat", "mpnn", "ggnn")
EDGE_FAMILIES = ("gine", "mpnn")  # families whose messages read edge features
SHARED_WEIGHT_FAMILIES = ("mpnn", "ggnn")  # one layer reused every round
DENSE_FAMILIES = ("gin", "gcn", "sage", "gat", "ggnn")  # messages depend on nodes only
READOUTS = ("sum", "mean", "max")
AGGRS = ("sum", "mean", "max")


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
        def bad(msg: str) -> None:
            raise CheckpointError(f"invalid model config: {msg}")

        if self.family not in FAMILIES:
            bad(f"could not resolve family {self.family!r} among choices {list(FAMILIES)}")
        if self.task not in TASKS:
            bad(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        if self.readout not in READOUTS:
            bad(f"unknown readout {self.readout!r}; expected one of {list(READOUTS)}")
        if self.aggr not in AGGRS:
            bad(f"unknown aggregation {self.aggr!r}; expected one of {list(AGGRS)}")
        for name in ("node_features", "out_dim", "hidden", "num_rounds"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.family in EDGE_FAMILIES and self.edge_features < 1:
            bad(f"family {self.family!r} needs edge features but edge_features={self.edge_features}")
        if self.family == "gat" and self.hidden % self.heads:
            bad(f"gat hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.target_mean and len(self.target_mean) != self.out_dim:
            bad("target_mean length differs from out_dim")

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
                kw[k] = tuple(kw[k])
        try:
            return cls(**kw)
        except TypeError as e:
            raise CheckpointError(f"invalid model config: {e}") from e
