"""The multi-task TD-MPC2 world model: encoder, latent dynamics, reward, policy prior and Q ensemble."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import math
from .config import ModelConfig
from .layers import EnsembleLinear, NormedLinear, QEnsemble, SimNorm, folded_first_layer, mlp

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

    def fuse_kernels(self, on: bool = True) -> "WorldModel":
        """Run every dropout→LayerNorm→Mish/SimNorm tail as one forward kernel and one hand-derived backward
        kernel (C on CPU float32, :mod:`tdmpc_opt_lib.kernels`; ``torch.compile``'d elsewhere), and take the task
        embedding into each first layer as per-task rows (:func:`folded_first_layer`): faster training, same
        results to float rounding (dropout masks come from another RNG)."""
        for mod in self.modules():
            if isinstance(mod, (NormedLinear, EnsembleLinear)):
                mod.fused = on
        return self

    def train(self, mode: bool = True) -> "WorldModel":
        """``nn.Module.train``, the module tree walked directly (9 µs instead of 130 µs through nn.Module's
        ``__setattr__``; an update switches modes three times)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be a bool, got {mode!r}")
        stack: list[nn.Module] = [self]
        while stack:
            mod = stack.pop()
            mod.__dict__["training"] = mode
            stack.extend(m for m in mod._modules.values() if m is not None)
        return self

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
        """Append the task embedding (``detach``: as a constant) to ``x``; ``task`` broadcasts over all leading
        dims but the last of x."""
        if isinstance(task, int):
            task = torch.full(x.shape[:-1], task, device=x.device)
        emb = self.task_vectors(task.long())
        if detach:
            emb = emb.detach()
        if emb.shape[:-1] != x.shape[:-1]:
            emb = emb.expand(*x.shape[:-1], emb.shape[-1])
        return torch.cat([x, emb], dim=-1)

    def task_vectors(self, task: torch.Tensor) -> torch.Tensor:
        """Embedding rows of ``task``. As ``nn.Embedding(max_norm=1)`` (TD-MPC2), the rows looked up are first
        rescaled in place to norm ≤ 1 (:meth:`_renorm`)."""
        self._renorm(task)
        return F.embedding(task, self._task_emb.weight)

    def _renorm(self, task: torch.Tensor) -> None:
        """Rescale the embedding rows of ``task`` to norm ≤ 1 in place, in one vectorised step (torch sorts the
        indices on every call). Idempotent, so skipped while neither the weights nor ``task`` changed since the
        last time (a training update looks the same tasks up 11 times between two optimizer steps)."""
        w = self._task_emb.weight

        def state() -> tuple:       # the tensors themselves are kept (compared by identity), so ids are not reused
            return w, w._version, w.data_ptr(), task, task._version

        done = self.__dict__.get("_renormed")
        if done is None or any(a is not b if isinstance(a, torch.Tensor) else a != b for a, b in zip(state(), done)):
            with torch.no_grad():
                norm = w.norm(dim=1)
                used = torch.bincount(task.reshape(-1), minlength=w.shape[0]) > 0
                w.mul_(torch.where(used & (norm > 1), 1 / (norm + 1e-7), 1.0).unsqueeze(1))
            self.__dict__["_renormed"] = state()

    FOLD_MIN_ROWS = 256

    def _foldable(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """Whether an MLP's first layer takes the task embedding folded (:func:`folded_first_layer`): with fused
        kernels on (as in training), a plain float layer, and rows enough to pay for the per-task rows' extra
        ops (an update at batch 256: ×1.035; at batch 64, folding every layer: ×0.95)."""
        return type(layer) in (NormedLinear, EnsembleLinear) and layer.fused and \
            x.numel() >= self.FOLD_MIN_ROWS * x.shape[-1]

    def _folded(self, net: nn.Sequential, x: torch.Tensor, task: TaskLike, extra: torch.Tensor | None = None,
                heads: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        """``net([x, emb(task), extra])`` with the first layer folded (``detach``: the embedding as a constant):
        rows flattened, ``[R, out]`` (or ``[n, R, out]`` for an ensemble)."""
        task = torch.as_tensor(task, device=x.device).long()
        self._renorm(task)
        w = self._task_emb.weight
        # a copy: the weights are renormalised in place when the next batch's tasks are looked up
        table = w.detach() if detach or not torch.is_grad_enabled() else w.clone()
        first, ensemble = net[0], isinstance(net[0], EnsembleLinear)
        y = folded_first_layer(first, x, task, table, extra, heads)
        y = first.tail(y, heads) if ensemble else first.tail(y)
        for layer in list(net)[1:]:
            y = layer(y, heads) if ensemble else layer(y)
        return y

    def action_mask(self, task: TaskLike) -> torch.Tensor:
        if isinstance(task, int):
            return self._action_masks[task]
        return self._action_masks[task.long()]

    def encode(self, obs: torch.Tensor, task: TaskLike) -> torch.Tensor:
        net = self._encoder["state"]
        if self._foldable(net[0], obs):
            return self._folded(net, obs, task).reshape(*obs.shape[:-1], self.cfg.latent_dim)
        return net(self.task_emb(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        if self._foldable(self._dynamics[0], z):
            return self._folded(self._dynamics, z, task, a).reshape(z.shape)
        return self._dynamics(torch.cat([self.task_emb(z, task), a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Reward logits over ``num_bins`` symlog bins."""
        if self._foldable(self._reward[0], z):
            return self._folded(self._reward, z, task, a).reshape(*z.shape[:-1], self.cfg.num_bins)
        return self._reward(torch.cat([self.task_emb(z, task), a], dim=-1))

    def pi(self, z: torch.Tensor, task: TaskLike, generator: torch.Generator | None = None,
           detach: bool = False) -> tuple[torch.Tensor, dict]:
        """Sample an action from the squashed-Gaussian policy prior; ``info`` holds mean, log_std, entropies.
        ``detach``: the task embedding enters as a constant (no gradient reaches it)."""
        if self._foldable(self._pi[0], z):
            out = self._folded(self._pi, z, task, detach=detach).reshape(*z.shape[:-1], 2 * self.cfg.action_dim)
        else:
            out = self._pi(self.task_emb(z, task, detach=detach))
        mean, log_std = out.chunk(2, dim=-1)
        log_std = math.scale_log_std(log_std, self.cfg.log_std_min, self.cfg.log_std_max)
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
          detach: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Q-values. ``all``: logits ``[num_q, *batch, bins]``; ``min``/``avg``: over two random heads.
        ``detach``: gradients reach ``z`` and ``a`` only, not the Q parameters or the task embedding."""
        if return_type not in ("all", "min", "avg"):
            raise ValueError(f"return_type must be 'all', 'min' or 'avg', got {return_type!r}")
        net = self._target_Qs if target else self._Qs
        batch = z.shape[:-1]
        heads = None
        if return_type != "all":
            # Two heads drawn at random (every call, as TD-MPC2: the random stream stays the public one's). With
            # two heads in all, both in some order: min and mean are symmetric and the heads' dropout masks are
            # i.i.d., so the order changes nothing and no weights are gathered.
            heads = two_random_heads(self.cfg.num_q, generator, z.device)
            if self.cfg.num_q == 2:
                heads = None
        if self._foldable(net[0], z):
            logits = self._frozen(net, detach, lambda: self._folded(net, z, task, a, heads, detach))
        else:
            ze = self.task_emb(z, task, detach=detach).reshape(-1, z.shape[-1] + self.cfg.task_dim)
            a = a.reshape(-1, a.shape[-1])
            if detach:  # the action enters layer 0 through its own matmul: no other input gradient is computed
                logits = self._frozen(net, detach, lambda: net(ze, heads, a))
            else:
                logits = net(torch.cat([ze, a], dim=-1), heads)
        if return_type == "all":
            return logits.reshape(-1, *batch, self.cfg.num_bins)
        q = math.two_hot_inv(logits, self.cfg.vmin, self.cfg.vmax).reshape(2, *batch, 1)
        return q.min(0).values if return_type == "min" else q.sum(0) / 2

    @staticmethod
    def _frozen(net: QEnsemble, detach: bool, run) -> torch.Tensor:
        """``run()``; with ``detach``, with the parameters of ``net`` excluded from autograd meanwhile."""
        if not detach:
            return run()
        grads = [p.requires_grad for p in net.parameters()]
        net.requires_grad_(False)               # gradients reach the inputs, not the Q parameters
        try:
            return run()
        finally:
            for p, g in zip(net.parameters(), grads):
                p.requires_grad_(g)


def two_random_heads(num_q: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Indices of two distinct Q heads drawn at random (TD-MPC2 draws a permutation every call)."""
    return torch.randperm(num_q, generator=generator, device=device)[:2]
