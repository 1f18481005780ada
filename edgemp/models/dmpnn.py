"""chemprop v2's directed message-passing network (D-MPNN), rebuilt for export.

Module names mirror chemprop's ``MPNN`` (``message_passing.W_i`` … ``bn`` … ``predictor.ffn``),
so a chemprop state dict loads strictly, key for key, and the maths is chemprop's
(``chemprop/nn/message_passing``, ``nn/agg.py``, ``nn/predictors.py``, ``nn/transforms.py``):

.. math::
    h^{(0)}_{vw} = W_i(x_v \\Vert e_{vw}), \\quad
    h^{(t)}_{vw} = \\tau\\big(h^{(0)}_{vw} + W_h(\\textstyle\\sum_{u \\to v} h^{(t-1)}_{uv} - h^{(t-1)}_{wv})\\big)

then atoms gather their incoming edges, :math:`\\tau(W_o(x_v \\Vert m_v))`, a per-molecule
sum / mean / norm (sum ÷ 100), optional batch norm, and the FFN with chemprop's output
transform (unscaling for regression, sigmoid for binary, softmax for multiclass).

Edges come in reverse pairs, as chemprop's featurizer (and :mod:`edgemp.chem`) lays them
out: edge ``2k + 1`` is ``2k`` reversed. The reverse of each edge is therefore arithmetic on
its position, which exports without any search. Sizes come from tensor shapes only.

Shapes: x [N, d_v], edge_index [2, E] int64, edge_attr [E, d_e], node_graph [N] int64,
``num_graphs`` G → ``{name: [G, out]}``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from edgemp.errors import CheckpointError
from edgemp.models.graph_ctx import SCATTER_IMPLS, scatter_sum
from edgemp.spec import ModelSpec, OutputSpec

MESSAGE_PASSING = ("bond", "atom")
AGGREGATIONS = ("mean", "sum", "norm")
TASKS = ("regression", "binary", "multiclass")


# Upper bounds (inclusive) of the integer hyper-parameters. A checkpoint is input: depth=10**9
# unrolls for hours and d_h=10**7 asks for terabytes. chemprop's defaults are depth 3, d_h 300
# and one 300-wide FFN layer; published models stay below depth 10 and widths of a few thousand.
INT_CAPS = {"node_features": 2**14, "edge_features": 2**14, "hidden": 2**14, "depth": 64,
            "n_tasks": 2**16, "n_classes": 2**16}
FFN_LAYERS_MAX = 64
_CHEMPROP_NAMES = {"node_features": "node_features (d_v)", "edge_features": "edge_features (d_e)",
                   "hidden": "hidden (d_h)"}


def _check_int(name: str, value: object, hi: int) -> None:
    name = _CHEMPROP_NAMES.get(name, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"chemprop model: {name} must be an integer, got {value!r}")
    if not 1 <= value <= hi:
        raise CheckpointError(f"chemprop model: {name} must be from 1 to {hi}, got {value}")


@dataclass(frozen=True)
class DMPNNConfig:
    """Everything that rebuilds a chemprop MPNN (weights come from its state dict)."""

    message_passing: str  # "bond" (chemprop's default) or "atom"
    node_features: int  # d_v
    edge_features: int  # d_e
    hidden: int = 300  # d_h
    depth: int = 3
    bias: bool = False
    activation: str = "ReLU"  # a torch.nn activation class name, as chemprop pickles it
    activation_args: tuple[tuple[str, object], ...] = ()  # e.g. (("negative_slope", 0.1),)
    ffn_activation: str = "ReLU"
    ffn_activation_args: tuple[tuple[str, object], ...] = ()
    undirected: bool = False
    aggregation: str = "norm"
    norm: float = 100.0
    batch_norm: bool = False
    ffn_hidden: tuple[int, ...] = (300,)  # one width per hidden layer
    task: str = "regression"
    unscale: bool = True  # regression: chemprop's UnscaleTransform (y * scale + mean) is in the weights
    n_tasks: int = 1
    n_classes: int = 1  # multiclass only
    featurizer: str = "chemprop-v2/1"

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("message passing", self.message_passing, MESSAGE_PASSING),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("task", self.task, TASKS),
            ("activation", self.activation, ACTIVATIONS),
            ("FFN activation", self.ffn_activation, ACTIVATIONS),
        ):
            if value not in choices:
                raise CheckpointError(f"chemprop model: could not resolve {name} {value!r} among choices {list(choices)}")
        for name, hi in INT_CAPS.items():
            _check_int(name, getattr(self, name), hi)
        if len(self.ffn_hidden) > FFN_LAYERS_MAX:
            raise CheckpointError(f"chemprop model: the FFN has {len(self.ffn_hidden)} hidden layers; "
                                  f"at most {FFN_LAYERS_MAX} are supported")
        for h in self.ffn_hidden:
            _check_int("FFN width", h, INT_CAPS["hidden"])
        norm_is_number = isinstance(self.norm, (int, float)) and not isinstance(self.norm, bool)
        if not (norm_is_number and math.isfinite(self.norm) and self.norm > 0):  # the readout divides by it
            raise CheckpointError(f"chemprop model: norm must be a positive number, got {self.norm!r}")

    @property
    def out_dim(self) -> int:
        return self.n_tasks * (self.n_classes if self.task == "multiclass" else 1)

    def spec(self) -> ModelSpec:
        name = "prediction" if self.task == "regression" else "probabilities"
        return ModelSpec(
            family=f"chemprop-dmpnn-{self.message_passing}",
            task="regression" if self.task == "regression" else "classification",
            node_features=self.node_features,
            edge_features=self.edge_features,
            num_rounds=self.depth,
            outputs=(OutputSpec(name=name, level="graph", width=self.out_dim),),
            featurizer=self.featurizer,
        )

    def to_dict(self) -> dict:
        return asdict(self)


ACTIVATIONS = ("ReLU", "LeakyReLU", "PReLU", "Tanh", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid",
               "ReLU6", "Softplus")


def make_activation(name: str, args: tuple[tuple[str, object], ...]) -> nn.Module:
    """The torch activation ``name`` (one of :data:`ACTIVATIONS`) with chemprop's constructor arguments."""
    if name not in ACTIVATIONS:
        raise CheckpointError(f"chemprop model: could not resolve activation {name!r} among choices {list(ACTIVATIONS)}")
    return getattr(nn, name)(**dict(args))


class UnscaleTransform(nn.Module):
    """chemprop's output unscaling (eval mode): ``y * scale + mean`` per task."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, n))
        self.register_buffer("scale", torch.ones(1, n))

    def forward(self, y: Tensor) -> Tensor:
        return y * self.scale + self.mean


class MessagePassing(nn.Module):
    """``W_i``, ``W_h``, ``W_o`` and the activation ``tau``, as chemprop names them."""

    def __init__(self, cfg: DMPNNConfig) -> None:
        super().__init__()
        d_v, d_e, d_h = cfg.node_features, cfg.edge_features, cfg.hidden
        bond = cfg.message_passing == "bond"
        self.W_i = nn.Linear(d_v + d_e if bond else d_v, d_h, cfg.bias)
        self.W_h = nn.Linear(d_h if bond else d_e + d_h, d_h, cfg.bias)
        self.W_o = nn.Linear(d_v + d_h, d_h)
        self.tau = make_activation(cfg.activation, cfg.activation_args)


def _ffn(cfg: DMPNNConfig) -> nn.Sequential:
    """chemprop's ``MLP.build``: Linear, then (act, dropout, Linear) blocks; dropout is a no-op here."""
    dims = [cfg.hidden] + [int(h) for h in cfg.ffn_hidden] + [cfg.out_dim]
    blocks = [nn.Sequential(nn.Linear(dims[0], dims[1]))]
    blocks += [nn.Sequential(make_activation(cfg.ffn_activation, cfg.ffn_activation_args), nn.Dropout(0.0),
                             nn.Linear(a, b))
               for a, b in zip(dims[1:-1], dims[2:])]
    return nn.Sequential(*blocks)


class Predictor(nn.Module):
    def __init__(self, cfg: DMPNNConfig) -> None:
        super().__init__()
        self.ffn = _ffn(cfg)
        unscale = cfg.task == "regression" and cfg.unscale
        self.output_transform = UnscaleTransform(cfg.n_tasks) if unscale else nn.Identity()


def reverse_edges(num_edges: int, device: torch.device) -> Tensor:
    """Position of each edge's reverse: 2k ↔ 2k+1 (an odd last edge points at itself)."""
    idx = torch.arange(num_edges, device=device)  # [E]
    return torch.clamp(idx + 1 - 2 * (idx % 2), max=num_edges - 1)  # [E]


class DMPNN(nn.Module):
    """chemprop's MPNN (message passing → aggregation → batch norm → FFN) for one molecule input."""

    def __init__(self, cfg: DMPNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.node_features = cfg.node_features
        self.edge_features = cfg.edge_features
        self.scatter_impl = "index_add"
        self.message_passing = MessagePassing(cfg)
        self.bn = nn.BatchNorm1d(cfg.hidden) if cfg.batch_norm else nn.Identity()
        self.predictor = Predictor(cfg)
        self.output_name = cfg.spec().outputs[0].name

    def set_scatter_impl(self, impl: str) -> None:
        if impl not in SCATTER_IMPLS:
            raise ValueError(f"scatter_impl must be one of {SCATTER_IMPLS}, got {impl!r}")
        self.scatter_impl = impl

    def _sum_into(self, rows: Tensor, index: Tensor, size: int) -> Tensor:
        return scatter_sum(rows, index, size, self.scatter_impl)

    def encode_atoms(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Message passing: atom features [N, d_v] → atom encodings [N, d_h]."""
        mp, cfg = self.message_passing, self.cfg
        n, src, dst = x.shape[0], edge_index[0], edge_index[1]
        rev = reverse_edges(src.shape[0], x.device)  # [E]
        if cfg.message_passing == "bond":
            h0 = mp.W_i(torch.cat([x.index_select(0, src), edge_attr], dim=1))  # [E, d_h]
        else:
            h0 = mp.W_i(x.index_select(0, src))  # [E, d_h]
        h = mp.tau(h0)
        for _ in range(1, cfg.depth):
            if cfg.undirected:
                h = (h + h.index_select(0, rev)) / 2
            if cfg.message_passing == "bond":  # all messages into the source, minus the reverse edge's
                m = self._sum_into(h, dst, n).index_select(0, src) - h.index_select(0, rev)  # [E, d_h]
            else:
                m = self._sum_into(torch.cat([h, edge_attr], dim=1), dst, n).index_select(0, src)  # [E, d_h+d_e]
            h = mp.tau(h0 + mp.W_h(m))
        m_atoms = self._sum_into(h, dst, n)  # [N, d_h]
        return mp.tau(mp.W_o(torch.cat([x, m_atoms], dim=1)))  # [N, d_h]

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, node_graph: Tensor, num_graphs: int
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        atoms = self.encode_atoms(x, edge_index, edge_attr)
        z = self._sum_into(atoms, node_graph, num_graphs)  # [G, d_h]
        if cfg.aggregation == "mean":
            ones = torch.ones_like(node_graph, dtype=z.dtype).unsqueeze(1)  # [N, 1]
            z = z / self._sum_into(ones, node_graph, num_graphs).clamp(min=1.0)
        elif cfg.aggregation == "norm":
            z = z / cfg.norm
        y = self.predictor.ffn(self.bn(z))  # [G, out]
        if cfg.task == "regression":
            y = self.predictor.output_transform(y)
        elif cfg.task == "binary":
            y = torch.sigmoid(y)
        else:
            y = y.reshape(-1, cfg.n_tasks, cfg.n_classes).softmax(-1).reshape(-1, cfg.out_dim)
        return {self.output_name: y}
