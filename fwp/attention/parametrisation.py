"""The parts of the modern fast-weight layers that sit around the core (docs/attention.md, "The DeltaNet
family"): a short causal convolution on q, k, v, the decay of Gated DeltaNet, and the gated output
RMSNorm. ``MultiHeadAttention`` builds those its core asks for (``short_conv``, ``decay``,
``output_gate``) from ``d_model`` and the number of heads; the core never sees ``d_model``.

Shapes: x ``[B, T, d_model]``; per-head tensors ``[B, H, T, d_head]``; channels ``C`` of the
convolution are the ``3·H·d_head`` units of q, k and v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwp.ops.validation import require_at_least

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
"""The range of Gated DeltaNet's initial step sizes ``softplus(b)`` (log-uniform) and their floor."""
A_INIT_MAX = 16.0
"""Gated DeltaNet's initial ``A`` per head is uniform in ``(0, A_INIT_MAX)``."""
OUTPUT_NORM_EPS = 1e-5


class ShortConvolution(nn.Module):
    """A causal depthwise convolution of length ``kernel`` followed by SiLU (Yang et al. 2024; as
    DeltaNet's q, k and v convolutions): ``y_t[c] = silu(Σ_{j=0}^{K−1} w[c, j] · x_{t−K+1+j}[c])`` with
    ``x_t = 0`` before the sequence, or the carried inputs of the previous call. No bias.

    ``weight``: ``[C, K]``, initialised as ``nn.Conv1d``'s (uniform in ``±1/√K``).
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        require_at_least("short_conv", kernel, 1)
        self.channels, self.kernel = channels, kernel
        bound = 1.0 / math.sqrt(kernel)
        self.weight = nn.Parameter(torch.empty(channels, kernel).uniform_(-bound, bound))

    def forward(
        self, x: Tensor, past: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x ``[B, T, C]``, past ``[B, K − 1, C]`` (None: zeros) → ``[B, T, C]`` and the new past: the
        last ``K − 1`` inputs of each row, or with ``lengths`` ``[B]`` (rows padded at the end) the
        ``K − 1`` inputs before position ``lengths[b]`` of row ``b`` (past inputs where it is shorter)."""
        B, _, C = x.shape
        if past is None:
            past = x.new_zeros(B, self.kernel - 1, C)
        elif tuple(past.shape) != (B, self.kernel - 1, C):
            raise ValueError(
                f"the short convolution's state must be [B, kernel - 1, C] = {(B, self.kernel - 1, C)}, "
                f"got shape {tuple(past.shape)}"
            )
        extended = torch.cat([past.to(x.dtype), x], dim=1)  # [B, K − 1 + T, C]
        out = F.conv1d(extended.transpose(1, 2), self.weight.to(x.dtype).unsqueeze(1), groups=C)
        if lengths is None:
            return F.silu(out.transpose(1, 2)), extended[:, extended.shape[1] - (self.kernel - 1) :]
        last = lengths.to(x.device)[:, None] + torch.arange(self.kernel - 1, device=x.device)  # [B, K − 1]
        return F.silu(out.transpose(1, 2)), extended.gather(1, last[:, :, None].expand(-1, -1, C))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.kernel}"


class GatedDeltaNetDecay(nn.Module):
    """Gated DeltaNet's decay (Yang, Kautz & Hatamizadeh 2025): per head ``h`` and position ``t``,
    ``log α_t = −A_h · softplus(a_t + b_h)`` with ``a_t = x_t W_a`` (``W_a``: ``[d_model, H]``, no bias),
    ``A_h > 0`` stored as ``A_log`` and the bias ``b_h`` as ``dt_bias``. Initialised as in the paper's
    code: ``A ~ U(0, 16)``, ``softplus(b) = dt`` log-uniform in ``[1e-3, 1e-1]`` (floored at 1e-4).
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(n_heads).uniform_(0, A_INIT_MAX).log())
        dt = torch.exp(torch.rand(n_heads) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        dt = dt.clamp(min=DT_FLOOR)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, T, d_model]`` → ``log α`` ``[B, H, T]`` (≤ 0)."""
        # contiguous: softplus's backward traced by torch.compile (aot) mis-strides a transposed input
        a = self.a_proj(x).transpose(1, 2).contiguous()  # [B, H, T]
        return -self.A_log.exp()[:, None] * F.softplus(a + self.dt_bias[:, None])


class GatedOutputNorm(nn.Module):
    """The output of every head RMS-normalised and gated (Yang et al. 2024):
    ``o = RMSNorm(y) ⊙ silu(x W_g)`` with ``W_g``: ``[d_model, H·d_head]`` (no bias) and one RMSNorm
    weight ``[d_head]`` shared by the heads (ε = 1e-5), computed in the weight's dtype (float32 under
    bf16 autocast)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.g_proj = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.norm = nn.RMSNorm(d_head, eps=OUTPUT_NORM_EPS)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """y ``[B, H, T, d_head]``, x ``[B, T, d_model]`` → ``[B, H, T, d_head]``."""
        B, T, _ = x.shape
        gate = self.g_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        normed = self.norm(y.to(self.norm.weight.dtype)).to(y.dtype)  # in the weight's dtype, as fla
        return normed * F.silu(gate.to(y.dtype))
