"""The multi-task TD-MPC2 world model: encoder, latent dynamics, reward, policy prior and Q ensemble."""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

from . import math
from .config import ModelConfig
from .layers import EnsembleLinear, QEnsemble, SimNorm, mlp

TaskLike = torch.Tensor | int


class WorldModel(nn.Module):
    """TD-MPC2's implicit world model for a multi-task set (state observations).

    Every input is concatenated as ``[x, task_embedding]`` and, where an action is used,
    ``[z, task_embedding, action]``. ``task`` is an int or a LongTensor of task indices (one per row).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        L, E, A, M = cfg.latent_dim, cfg.task_dim, cfg.action_dim, cfg.mlp_dim
        self._task_emb = nn.Embedding(cfg.num_tasks, E, max_norm=1)
        self._encoder = nn.ModuleDict({"state": mlp(cfg.obs_dim + E, max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim],
                                                    L, act=SimNorm(cfg.simnorm_dim))})
        self._dynamics = mlp(L + E + A, 2 * [M], L, act=SimNorm(cfg.simnorm_dim))
        self._reward = mlp(L + E + A, 2 * [M], cfg.num_bins)
        self._pi = mlp(L + E, 2 * [M], 2 * A)
        self._Qs = QEnsemble(cfg.num_q, L + E + A, 2 * [M], cfg.num_bins, dropout=cfg.dropout)
        self._target_Qs = copy.deepcopy(self._Qs).requires_grad_(False)
        masks = torch.zeros(cfg.num_tasks, A)
        for i, dim in enumerate(cfg.tasks.action_dims):
            masks[i, :dim] = 1
        self.register_buffer("_action_masks", masks, persistent=False)
        self.register_buffer("discount", torch.tensor(cfg.tasks.discounts(), dtype=torch.float32), persistent=False)
        self.init_weights()

    # ----------------------------------------------------------------- set-up
    def init_weights(self) -> None:
        """TD-MPC2 initialisation: trunc-normal(0.02) weights, zero biases, zero last reward/Q weights."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, EnsembleLinear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.uniform_(self._task_emb.weight, -0.02, 0.02)
        nn.init.zeros_(self._reward[-1].weight)
        nn.init.zeros_(self._Qs[-1].weight)
        self.sync_target(tau=1.0)

    @torch.no_grad()
    def sync_target(self, tau: float = 0.01) -> None:
        """Polyak update ``target ← (1−tau)·target + tau·online`` of the target Q ensemble."""
        torch._foreach_lerp_(list(self._target_Qs.parameters()), list(self._Qs.parameters()), tau)

    def param_counts(self) -> dict[str, int]:
        """Parameter count per component (target Qs listed separately, as checkpoints store them)."""
        parts = {"task_emb": self._task_emb, "encoder": self._encoder, "dynamics": self._dynamics,
                 "reward": self._reward, "pi": self._pi, "Qs": self._Qs, "target_Qs": self._target_Qs}
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total (without target Qs)"] = sum(v for k, v in counts.items() if k != "target_Qs")
        return counts

    def __repr__(self) -> str:
        counts = self.param_counts()
        lines = [f"WorldModel(size={self.cfg.model_size}, tasks={self.cfg.num_tasks}, latent={self.cfg.latent_dim})"]
        lines += [f"  {k:<26}{v:>12,}" for k, v in counts.items()]
        return "\n".join(lines)

    # ----------------------------------------------------------------- pieces
    def task_emb(self, x: torch.Tensor, task: TaskLike, detach: bool = False) -> torch.Tensor:
        """Append the task embedding (``detach``: as a constant) to ``x``; ``task`` broadcasts over the leading
        dims of ``x``."""
        if isinstance(task, int):
            task = torch.full(x.shape[:-1], task, device=x.device)
        emb = self.task_vectors(task)
        if detach:
            emb = emb.detach()
        return torch.cat([x, emb.expand(*x.shape[:-1], emb.shape[-1])], dim=-1)

    def task_vectors(self, task: torch.Tensor) -> torch.Tensor:
        """Embedding rows of ``task``; as ``nn.Embedding(max_norm=1)`` rescales the rows it looks up to norm ≤ 1
        in place (TD-MPC2)."""
        return self._task_emb(task.long())

    def action_mask(self, task: TaskLike) -> torch.Tensor:
        if isinstance(task, int):
            return self._action_masks[task]
        return self._action_masks[task.long()]

    def encode(self, obs: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Latent state of ``obs``."""
        return self._encoder["state"](self.task_emb(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Latent dynamics: the next latent after action ``a``."""
        return self._dynamics(torch.cat([self.task_emb(z, task), a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Reward logits over ``num_bins`` symlog bins."""
        return self._reward(torch.cat([self.task_emb(z, task), a], dim=-1))

    def next_and_reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`next` and :meth:`reward` at the same input (one call for the planner's rollouts)."""
        return self.next(z, a, task), self.reward(z, a, task)

    def pi(self, z: torch.Tensor, task: TaskLike, generator: torch.Generator | None = None, detach: bool = False,
           eps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Sample an action from the squashed-Gaussian policy prior; ``info`` holds mean, log_std, entropies.
        ``detach``: the task embedding enters as a constant; ``eps``: the standard-normal noise (else drawn)."""
        return self._policy(self._pi(self.task_emb(z, task, detach=detach)), task, generator, eps)

    def _policy(self, out: torch.Tensor, task: TaskLike, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The squashed Gaussian of the policy network's output ``out = [mean, log_std]`` (masked to the task's
        action dims): a sample and its statistics."""
        mean, log_std = out.chunk(2, dim=-1)
        log_std = math.scale_log_std(log_std, self.cfg.log_std_min, self.cfg.log_std_max)
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        mask = self.action_mask(task)
        mean, log_std, eps = mean * mask, log_std * mask, eps * mask
        action_dims = mask.sum(-1, keepdim=True)
        log_prob = math.gaussian_logprob(eps, log_std)
        scaled_log_prob = log_prob * action_dims
        action = torch.tanh(mean + eps * log_std.exp())
        log_prob = log_prob - math.squash_correction(action)
        entropy_scale = scaled_log_prob / (log_prob + 1e-8)
        info = {"mean": torch.tanh(mean), "log_std": log_std, "entropy": -log_prob,
                "scaled_entropy": -log_prob * entropy_scale}
        return action, info

    def Q(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike, return_type: str = "min", target: bool = False,
          detach: bool = False, generator: torch.Generator | None = None,
          heads: torch.Tensor | None = None) -> torch.Tensor:
        """Q-values. ``all``: logits ``[num_q, *batch, bins]``; ``min``/``avg``: over two random heads (or the two
        ``heads`` given).
        ``detach``: gradients reach ``z`` and ``a`` only, not the Q parameters or the task embedding."""
        net = self._target_Qs if target else self._Qs
        heads = self._q_heads(return_type, heads, generator, z.device)
        x = torch.cat([self.task_emb(z, task, detach=detach), a], dim=-1)
        with frozen(net, detach):
            logits = net(x.reshape(-1, x.shape[-1]), heads)
        return self._q_values(logits, z.shape[:-1], return_type)

    def _q_heads(self, return_type: str, heads: torch.Tensor | None, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor | None:
        """The Q heads to evaluate: all (None) or two, drawn at random every call as TD-MPC2 does."""
        if return_type not in ("all", "min", "avg"):
            raise ValueError(f"return_type must be 'all', 'min' or 'avg', got {return_type!r}")
        if return_type == "all":
            return None
        if heads is None:
            heads = two_random_heads(self.cfg.num_q, generator, device)
        return None if heads.shape[0] == self.cfg.num_q else heads   # every head: min and mean ignore the order

    def _q_values(self, logits: torch.Tensor, batch: torch.Size, return_type: str) -> torch.Tensor:
        """Logits ``[heads, rows, bins]`` → ``all``: ``[heads, *batch, bins]``; ``min``/``avg`` of the two heads'
        values ``[*batch, 1]``."""
        if return_type == "all":
            return logits.reshape(-1, *batch, self.cfg.num_bins)
        q = math.two_hot_inv(logits, self.cfg.vmin, self.cfg.vmax).reshape(2, *batch, 1)
        return q.min(0).values if return_type == "min" else q.sum(0) / 2


@contextlib.contextmanager
def frozen(net: nn.Module, on: bool = True):
    """Meanwhile (``on``), the parameters of ``net`` take no gradient (gradients still reach its inputs)."""
    if not on:
        yield
        return
    grads = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)


def two_random_heads(num_q: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Indices of two distinct Q heads drawn at random (TD-MPC2 draws a permutation every call)."""
    return torch.randperm(num_q, generator=generator, device=device)[:2]
