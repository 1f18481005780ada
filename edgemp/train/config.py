"""What a training run is asked to do: :class:`TrainConfig`, and what it reports back.

Torch is not needed to build or check a config; the loop (:mod:`edgemp.train.loop`) is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edgemp.errors import EdgempError
from edgemp.models.config import AGGRS, FAMILIES, READOUTS
from edgemp.spec import TASKS


VAL_FRACTION = 0.1  # share of the training graphs held out when no validation set is given
EVAL_BATCH_SIZE = 256  # graphs per forward when predicting (no gradients: larger is fine)
GRAD_CLIP_NORM = 10.0  # MPNN's edge network makes per-edge H×H matrices; clipping keeps early steps sane


class TrainConfigError(EdgempError, ValueError):
    """A training option is out of range or does not fit the data."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (the model's shape comes from the data, not from here).

    Defaults train the README's MPNN on the 1025 solubility molecules in a few minutes
    on two CPU cores.
    """

    family: str
    task: str = "regression"
    epochs: int = 100
    hidden: int = 64
    rounds: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    patience: int = 15  # epochs without a better validation metric before stopping
    weight_decay: float = 0.0
    # Multiply the learning rate by this after patience//3 epochs without improvement
    # (1.0 = constant): a small validation set is noisy, and a lower rate settles it.
    lr_decay: float = 0.5
    aggr: str = "mean"  # sage / mpnn neighbour aggregation
    readout: str = "sum"
    heads: int = 4  # gat

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise TrainConfigError(f"invalid training option: {msg}")

        if self.family not in FAMILIES:
            bad(f"could not resolve family {self.family!r} among choices {list(FAMILIES)}")
        if self.task not in TASKS:
            bad(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        if self.aggr not in AGGRS:
            bad(f"unknown aggregation {self.aggr!r}; expected one of {list(AGGRS)}")
        if self.readout not in READOUTS:
            bad(f"unknown readout {self.readout!r}; expected one of {list(READOUTS)}")
        for name in ("epochs", "hidden", "rounds", "batch_size", "patience", "heads"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**64:  # numpy refuses negative seeds, torch.manual_seed wider ones
            bad(f"seed must be from 0 to 2**64 - 1, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            bad(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.lr_decay <= 1.0:
            bad(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.family == "gat" and self.hidden % self.heads:
            bad(f"gat needs hidden divisible by heads, got hidden={self.hidden}, heads={self.heads}")


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean loss over the epoch's batches (normalised targets for regression)
    val_metric: float
    seconds: float


@dataclass
class TrainHistory:
    """What happened during :func:`train`; ``best_*`` describe the weights returned."""

    metric_name: str
    higher_is_better: bool
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_metric: float = float("nan")
    stopped_early: bool = False
    num_train_graphs: int = 0
    num_val_graphs: int = 0
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["epochs_run"] = self.epochs_run
        return d
