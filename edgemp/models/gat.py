"""GAT layer (Veličković et al. 2018), multi-head, self loops added analytically."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GATLayer(nn.Module):
    r"""Multi-head graph attention.

    .. math:: \alpha_{ij} = \mathrm{softmax}_{j \in N(i) \cup \{i\}}
              \big(\mathrm{LeakyReLU}(a_s^\top W h_j + a_d^\top W h_i)\big), \quad
              h_i' = \big\Vert_{k} \textstyle\sum_j \alpha^k_{ij} W^k h_j + b

    The self term is part of the softmax instead of an added edge, so the edge count
    never depends on data. Duplicate edges each get their own attention term.

    Args:
        hidden: input and output width H (= heads × per-head width).
        heads: number of attention heads (default: 4); must divide ``hidden``.
        negative_slope: LeakyReLU slope (default: 0.2).

    Shapes:
        h [N, H] (sparse) or [G*M, H] (dense, graph-major rows) → same shape.
    """

    def __init__(self, hidden: int, heads: int = 4, negative_slope: float = 0.2) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"GAT hidden width {hidden} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.negative_slope = negative_slope
        self.lin = nn.Linear(hidden, hidden, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(hidden))
        # [heads, H] 0/1: row k has ones over head k's C columns. ``alpha @ head_expand`` widens
        # per-head weights [..., heads] to [..., H], so the message products are plain same-shape
        # Muls: ONNX Runtime's broadcast Mul/Div over a trailing size-1 axis ([E, heads, 1]
        # against [E, heads, C]) measured ~2.7x slower than the widening MatMul plus a plain Mul.
        # Not persistent: checkpoints stay as they were.
        self.register_buffer("head_expand", torch.kron(torch.eye(heads), torch.ones(1, self.head_dim)),
                             persistent=False)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, h: Tensor, ctx) -> Tensor:
        flat = self.lin(h)  # [..., H]
        z = flat.unflatten(-1, (self.heads, self.head_dim))  # [..., heads, C]
        a_src = (z * self.att_src).sum(-1)  # [..., heads]
        a_dst = (z * self.att_dst).sum(-1)
        if ctx.dense:
            return self._dense(z, a_src, a_dst, ctx).flatten(-2) + self.bias
        # The attention weights of node i sum to 1, so Σ_j α_ij (z_j + b) = Σ_j α_ij z_j + b: adding the
        # bias to z, right after the (bias-free) GEMM, lets ONNX Runtime fuse it into that GEMM.
        return self._sparse(flat + self.bias, a_src, a_dst, ctx)

    def _sparse(self, z: Tensor, a_src: Tensor, a_dst: Tensor, ctx) -> Tensor:
        """``z`` [N, H] (heads side by side) → [N, H]; the softmax runs on [*, heads] tensors only."""
        edge_logit = F.leaky_relu(ctx.gather_src(a_src) + ctx.gather_dst(a_dst), self.negative_slope)  # [E, heads]
        self_logit = F.leaky_relu(a_src + a_dst, self.negative_slope)  # [N, heads]
        # Softmax is shift-invariant: the max over {i} ∪ N(i) keeps exp() from overflowing and,
        # seeded with the self term, is finite for every node (one scatter-max, no -inf fix-up).
        shift = ctx.aggregate_onto(self_logit, edge_logit, "max")  # [N, heads]
        w_edge = torch.exp(edge_logit - ctx.gather_dst(shift))  # [E, heads]
        w_self = torch.exp(self_logit - shift)  # [N, heads]
        inv_denom = 1.0 / ctx.aggregate_onto(w_self, w_edge, "sum")  # [N, heads]; >= 1 term each
        # Normalise the weights before they meet z: divisions on [*, heads], not on [N, H].
        alpha_edge = (w_edge * ctx.gather_dst(inv_denom)) @ self.head_expand  # [E, H]
        alpha_self = (w_self * inv_denom) @ self.head_expand  # [N, H]
        return ctx.aggregate_onto(z * alpha_self, ctx.gather_src(z) * alpha_edge, "sum")

    def _dense(self, z: Tensor, a_src: Tensor, a_dst: Tensor, ctx) -> Tensor:
        z, a_src, a_dst = ctx.as_graphs(z), ctx.as_graphs(a_src), ctx.as_graphs(a_dst)  # [G, M, ...]
        m = z.shape[1]
        eye = torch.eye(m, dtype=z.dtype, device=z.device).unsqueeze(0)
        weight = (ctx.adjacency + eye).unsqueeze(1)  # [G, 1, M(i), M(j)] edge multiplicity
        logit = a_dst.transpose(1, 2).unsqueeze(-1) + a_src.transpose(1, 2).unsqueeze(-2)  # [G, heads, M, M]
        logit = F.leaky_relu(logit, self.negative_slope)
        masked = torch.where(weight > 0, logit, torch.full_like(logit, float("-inf")))
        shift = masked.amax(-1, keepdim=True)  # finite: every row has its self term
        w = torch.exp(logit - shift) * weight  # [G, heads, M, M]
        num = torch.matmul(w, z.transpose(1, 2))  # [G, heads, M, C]
        out = num / w.sum(-1, keepdim=True)
        return out.transpose(1, 2).flatten(0, 1)  # [G*M, heads, C]
