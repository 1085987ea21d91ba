"""Small pure functions of TD-MPC2: symlog, two-hot regression, squashed Gaussians."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_SQRT_2PI = 0.9189385332046727  # 0.5 * log(2π)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def bins(num_bins: int, vmin: float, vmax: float, device=None) -> torch.Tensor:
    """Bin centres of the discrete regression (in symlog space)."""
    return torch.linspace(vmin, vmax, num_bins, device=device)


def two_hot(x: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Soft two-hot encoding of scalars ``x`` (any shape) in symlog space → ``[*x.shape, num_bins]``."""
    bin_size = (vmax - vmin) / (num_bins - 1)
    x = symlog(x).clamp(vmin, vmax)
    pos = (x - vmin) / bin_size
    idx = pos.floor().long().clamp(0, num_bins - 1)      # NaN (a diverged model) gives NaN weights, not a bad index
    offset = (pos - idx).unsqueeze(-1)
    out = torch.zeros(*x.shape, num_bins, dtype=x.dtype, device=x.device)
    out.scatter_(-1, idx.unsqueeze(-1), 1 - offset)
    out.scatter_add_(-1, ((idx + 1) % num_bins).unsqueeze(-1), offset)
    return out


def two_hot_inv(logits: torch.Tensor, vmin: float = -10.0, vmax: float = 10.0) -> torch.Tensor:
    """Expected value of the categorical ``logits`` over the symlog bins, mapped back by symexp.

    Returns a tensor with the last (bin) dimension removed.
    """
    centres = bins(logits.shape[-1], vmin, vmax, logits.device).to(logits.dtype)
    return symexp(F.softmax(logits, dim=-1) @ centres)


def soft_ce(logits: torch.Tensor, target: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Cross-entropy of ``logits [..., bins]`` against two-hot targets of scalars ``target [...]``."""
    return -(two_hot(target, num_bins, vmin, vmax) * F.log_softmax(logits, dim=-1)).sum(-1)


def scale_log_std(x: torch.Tensor, log_std_min: float, log_std_max: float) -> torch.Tensor:
    """Map an unbounded network output into [log_std_min, log_std_max] with tanh."""
    return log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(x) + 1)


def gaussian_logprob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(eps; 0, 1) of the standardised noise, summed over the last dim (keepdim)."""
    return (-0.5 * eps.pow(2) - log_std - LOG_SQRT_2PI).sum(-1, keepdim=True)


def squash_correction(action: torch.Tensor) -> torch.Tensor:
    """Σ log(1 − tanh(u)²) term (with TD-MPC2's relu/1e-6 guard), given ``action = tanh(u)``."""
    return torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)


def gumbel_argmax(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample an index per row of ``probs [..., K]`` by the Gumbel-max trick."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs.log() - noise.log()).argmax(-1)
