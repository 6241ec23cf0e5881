"""LUNA: linear attention with a learned positive-definite kernel (Shahbazi et al. 2025, arXiv 2512.08061).

    φ(x) = (1/√m) · [ψ_ℓ(w_iᵀx + b_i)]_{i ≤ m, ℓ ≤ L}  ∈ R^{m·L},    ψ_ℓ(u) = relu(MLP_ℓ(u))

W ∈ R^{m×d} ~ N(0, 1/d) and b = 0 (learnable) are shared by the heads of a layer; each "channel function"
ψ_ℓ is a scalar MLP 1 → hidden → 1 with ReLU, followed by a final ReLU so φ ≥ 0 and ⟨φ(x), φ(y)⟩ is a
non-negative positive-definite kernel. The attention itself is the shared linear core. As in the paper's
Listing 1, q and k enter φ unscaled (no d^-1/2) and the MLPs keep nn.Linear's initialisation.

Options beyond Listing 1:
- `envelope: learned`: the paper's eq. 11 multiplies φ(x) by a learned positive envelope h(x), which
  Listing 1 (and the default here, `none`) omits. Here h(x) = exp(clamp(aᵀx + c, ±10)) with a, c shared
  by the heads and zero at init, so h ≡ 1 (the default map) until trained. In the normalised attention
  a query's h cancels: h acts as a learned per-key weight.
- `revive_dead_channels: true`: with the paper's initialisation and the final ReLU, about a fifth of the
  channel functions are ≤ 0 over all of a realistic input range (dead: zero output, zero gradient), about
  half of φ's entries are 0, and now and then a layer starts with every channel dead (it outputs 0). With
  this option, on the first training batch each channel that is ≤ 0 on every input of that batch gets its
  output bias raised so that it is positive on half of them (the median of its pre-activation moves to 0;
  averaged over data-parallel ranks; done once, remembered by the checkpoint).

Evaluating the MLPs naively needs n·H·m·L·hidden activations, which dominate memory and time. But a
1 → hidden → 1 ReLU MLP is exactly a piecewise-linear function whose kinks are the hidden units'
thresholds t_j = −c_j/a_j. So `ChannelFeatures` sorts the L·hidden thresholds once, finds each input's
interval (`searchsorted`, O(log(L·hidden)) per input) and applies that interval's slope and intercept:
O(n·H·m·L) memory, no hidden activation ever exists, and only u, the interval indices and φ are saved. Its backward is exact too: the parameter gradients are sums of g and g·u
over the inputs where a unit is active, i.e. over a run of intervals, so they come from per-interval sums.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.hooks import mean_across_ranks
from lab.registry import AtLeast

from .linear_attention import ChunkSize, Eps, FeatureMap, LinearAttentionCore, finite_or_zero
from .registry import register_attention

ENVELOPE_BOUND = 10.0  # |log h(x)| <= this: h stays within a factor e^10 of 1
REVIVE_SAMPLE = 16_384  # inputs u used to find the channels dead on the first batch


def channel_tables(a1: Tensor, c1: Tensor, a2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The MLPs u -> Σ_j a2[ℓ,j]·relu(a1[ℓ,j]·u + c1[ℓ,j]) (params (L, hidden)) as piecewise-linear tables.

    Returns the sorted thresholds (L·hidden,); `active` (L·hidden + 1, L·hidden) bool, which hidden units
    are on in each interval (interval r holds thresholds[r−1] < u ≤ thresholds[r]); and the table
    (L·hidden + 1, 2L) of each interval's slope and intercept per channel.
    """
    num_channels, hidden = a1.shape
    a1, c1, a2 = a1.reshape(-1), c1.reshape(-1), a2.reshape(-1)  # (L·hidden,)
    thresholds = finite_or_zero(-c1 / a1).sort().values  # a1 = 0: constant unit, any boundary will do
    inside = torch.cat([thresholds[:1] - 1, (thresholds[1:] + thresholds[:-1]) / 2, thresholds[-1:] + 1])
    active = (inside[:, None] * a1 + c1) > 0  # (L·hidden + 1, L·hidden): unit j on in interval r
    on = active.to(a1.dtype).view(-1, num_channels, hidden)  # (L·hidden + 1, L, hidden)
    slope = (on * (a2 * a1).view(num_channels, hidden)).sum(-1)  # (L·hidden + 1, L)
    intercept = (on * (a2 * c1).view(num_channels, hidden)).sum(-1)
    return thresholds, active, torch.cat([slope, intercept], dim=-1)


class ChannelFeatures(torch.autograd.Function):
    """scale · relu(ψ_ℓ(u)) for every scalar u (P,) and channel ℓ -> (P, L); exact, no hidden layer."""

    @staticmethod
    def forward(ctx, u: Tensor, a1: Tensor, c1: Tensor, a2: Tensor, c2: Tensor, scale: float) -> Tensor:
        num_channels = a1.shape[0]
        thresholds, active, table = channel_tables(a1, c1, a2)
        slopes = table[:, :num_channels] * scale  # (intervals, L)
        table = torch.cat([slopes, (table[:, num_channels:] + c2) * scale], dim=-1)
        interval = torch.searchsorted(thresholds, u)  # (P,) in [0, L·hidden]
        slope, intercept = table.index_select(0, interval).chunk(2, dim=-1)  # (P, L) each
        out = torch.addcmul(intercept, slope, u[:, None]).relu_()  # (P, L)
        ctx.save_for_backward(u, interval, active, slopes, out, a1, c1, a2)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # grad (P, L)
        u, interval, active, slopes, out, a1, c1, a2 = ctx.saved_tensors
        num_channels, hidden = a1.shape
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # through the final ReLU
        grad_u = (grad * slopes.index_select(0, interval)).sum(-1)  # slope of each input's interval
        # the parameter gradients: sums of g and g·u over the intervals where each hidden unit is on
        sum_g = grad.new_zeros(len(active), num_channels).index_add_(0, interval, grad)  # (intervals, L)
        sum_gu = grad.new_zeros(len(active), num_channels).index_add_(0, interval, grad * u[:, None])
        on = active.to(grad.dtype).view(-1, num_channels, hidden) * ctx.scale  # (intervals, L, hidden)
        sum_g, sum_gu = (on * sum_g[..., None]).sum(0), (on * sum_gu[..., None]).sum(0)  # (L, hidden)
        grad_a2 = a1 * sum_gu + c1 * sum_g  # scale·Σ g·relu(a1·u + c1)
        return grad_u, a2 * sum_gu, a2 * sum_g, grad_a2, grad.sum(0) * ctx.scale, None


class LunaFeatureMap(FeatureMap):
    """x (B, H, N, d) -> (B, H, N, m·L): learned projections through L learned scalar channel functions."""

    def __init__(self, head_dim: int, num_features: int, num_channels: int, hidden: int, *,
                 envelope: str = "none", revive_dead_channels: bool = False):
        super().__init__()
        self.num_features, self.revive_dead_channels = num_features, revive_dead_channels
        self.projection = nn.Parameter(torch.randn(num_features, head_dim) / math.sqrt(head_dim))  # W (m, d)
        self.projection_bias = nn.Parameter(torch.zeros(num_features))  # b (m,)
        # L independent MLPs 1 -> hidden -> 1, stored batched; nn.Linear's default initialisation
        bound = 1 / math.sqrt(hidden)
        self.in_weight = nn.Parameter(torch.empty(num_channels, hidden).uniform_(-1, 1))
        self.in_bias = nn.Parameter(torch.empty(num_channels, hidden).uniform_(-1, 1))
        self.out_weight = nn.Parameter(torch.empty(num_channels, hidden).uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(num_channels).uniform_(-bound, bound))
        self.envelope = nn.Linear(head_dim, 1) if envelope == "learned" else None  # log h(x) = aᵀx + c
        if self.envelope is not None:
            nn.init.zeros_(self.envelope.weight)
            nn.init.zeros_(self.envelope.bias)
        self.register_buffer("channels_checked", torch.tensor(not revive_dead_channels))
        self.checking_pending = revive_dead_channels  # a host-side copy: forward never reads the buffer
        self.register_load_state_dict_post_hook(lambda module, _: module.sync_checking_flag())

    def sync_checking_flag(self) -> None:
        self.checking_pending = not bool(self.channels_checked)

    def forward(self, x: Tensor) -> Tensor:
        u = F.linear(x, self.projection.to(x.dtype), self.projection_bias.to(x.dtype))  # (B, H, N, m)
        if self.checking_pending and self.training:
            self.revive_dead(u.detach())
        params = (p.to(x.dtype) for p in (self.in_weight, self.in_bias, self.out_weight, self.out_bias))
        features = ChannelFeatures.apply(u.reshape(-1), *params, 1 / math.sqrt(self.num_features))  # (P, L)
        features = features.view(*u.shape[:-1], -1)  # (B, H, N, m·L)
        if self.envelope is not None:
            features = features * self.envelope(x).clamp(-ENVELOPE_BOUND, ENVELOPE_BOUND).exp()  # (B, H, N, 1)
        return features

    @torch.no_grad()
    def revive_dead(self, u: Tensor) -> None:
        """Raise the output bias of each channel that is <= 0 on every input u of this batch so that its
        pre-activation's median over the batch becomes 0 (averaged over data-parallel ranks)."""
        sample = u.reshape(-1)[:: max(1, u.numel() // REVIVE_SAMPLE)].to(self.in_weight.dtype)  # (P,) strided subsample
        hidden = torch.relu(sample[:, None, None] * self.in_weight + self.in_bias)  # (P, L, hidden)
        pre = (hidden * self.out_weight).sum(-1) + self.out_bias  # (P, L) before the final ReLU
        dead = pre.max(dim=0).values <= 0  # (L,)
        shift = torch.where(dead, -pre.median(dim=0).values, 0.0)
        self.out_bias.add_(mean_across_ranks(shift))
        self.channels_checked.fill_(True)
        self.checking_pending = False


@register_attention("luna")
class LunaAttention(LinearAttentionCore):
    def __init__(self, num_heads: int, head_dim: int, *, num_features: Annotated[int, AtLeast(1)] = 16,
                 num_channels: Annotated[int, AtLeast(1)] = 4, hidden: Annotated[int, AtLeast(1)] = 64,
                 envelope: Literal["none", "learned"] = "none", revive_dead_channels: bool = False,
                 chunk_size: ChunkSize = 64, eps: Eps = 1.0e-6):
        feature_map = LunaFeatureMap(head_dim, num_features, num_channels, hidden, envelope=envelope,
                                     revive_dead_channels=revive_dead_channels)
        super().__init__(num_heads, head_dim, feature_map, chunk_size=chunk_size, eps=eps)
