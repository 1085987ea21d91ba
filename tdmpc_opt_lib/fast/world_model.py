"""The world model with its task embedding folded into the first layers and fused tails (see :mod:`.fold`).

:class:`FastWorldModel` computes what :class:`~tdmpc_opt_lib.world_model.WorldModel` computes, to float
rounding, from the same parameters; :func:`tdmpc_opt_lib.fast.accelerate` builds one. Its methods fold where it
pays and fall back to the plain ones elsewhere (small batches, quantized layers).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..world_model import TaskLike, WorldModel, frozen
from .fold import arrange_first_layer, broadcast_first_layer, folded_first_layer
from .fused import FusedEnsembleLinear, FusedNormedLinear


def _fused(layer: nn.Module) -> bool:
    return type(layer) in (FusedNormedLinear, FusedEnsembleLinear)


class FastWorldModel(WorldModel):
    """:class:`WorldModel` with per-task first-layer rows and fused LayerNorm+activation kernels."""

    # Training batches fold from this many rows on: an update at batch 256 ×1.035; at batch 64 folding ×0.95.
    FOLD_MIN_ROWS = 256

    def train(self, mode: bool = True) -> "FastWorldModel":
        """``nn.Module.train`` walking the tree directly (9 µs instead of 130 µs; an update switches mode 3 times)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be a bool, got {mode!r}")
        stack: list[nn.Module] = [self]
        while stack:
            mod = stack.pop()
            mod.__dict__["training"] = mode
            stack.extend(m for m in mod._modules.values() if m is not None)
        return self

    # --------------------------------------------------------------- task embedding
    def task_vectors(self, task: torch.Tensor) -> torch.Tensor:
        task = task.long()
        self._renorm(task)
        return F.embedding(task, self._task_emb.weight)

    def _renorm(self, task: torch.Tensor) -> None:
        """Rescale the embedding rows of ``task`` to norm ≤ 1 in place, as ``nn.Embedding(max_norm=1)``, in one
        vectorised step; skipped while neither the weights nor ``task`` changed since the last time (an update
        looks the same tasks up 11 times between two optimizer steps), and inside a compiled planning call
        (whose rows were renormalised when it encoded its observations)."""
        if torch.compiler.is_compiling():
            return
        w = self._task_emb.weight

        def state() -> tuple:
            # the task tensor by its memory (a view of it, e.g. one task per environment, matches), pinned below
            version = 0 if task.is_inference() else task._version     # inference tensors have no version counter
            return w, w._version, w.data_ptr(), task.data_ptr(), task.numel(), task.dtype, version

        done = self.__dict__.get("_renormed")
        if done is None or any(a is not b if isinstance(a, torch.Tensor) else a != b for a, b in zip(state(), done)):
            with torch.no_grad():
                norm = w.norm(dim=1)
                # the rows looked up, marked without a host synchronisation (bincount's length needs one on a GPU)
                used = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device).index_fill_(0, task.reshape(-1), True)
                w.mul_(torch.where(used & (norm > 1), 1 / (norm + 1e-7), 1.0).unsqueeze(1))
            self.__dict__["_renormed"] = state()
            self.__dict__["_renormed_task"] = task     # kept alive: its memory cannot hold other tasks meanwhile

    # --------------------------------------------------------------- folding
    def _per_env(self, x: torch.Tensor, task: TaskLike) -> bool:
        """``task`` holds one index per environment, broadcast over the samples of ``x [N, S, k]`` (a planning
        call). Any row count: the weights are arranged once per call (also the policy trajectories' 24 rows; a
        planning call for 1 environment ×1.02 over concatenating the embedding for them)."""
        return isinstance(task, torch.Tensor) and x.dim() == 3 and task.shape == (x.shape[0], 1) and x.shape[1] > 1

    def _foldable(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return _fused(layer) and x.numel() >= self.FOLD_MIN_ROWS * x.shape[-1]

    def _folded(self, net: nn.Sequential, x: torch.Tensor, task: TaskLike, extra: torch.Tensor | None = None,
                heads: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        """``net([x, emb(task), extra])`` with per-task first-layer rows (``detach``: the embedding as a
        constant): rows flattened, ``[R, out]`` (or ``[n, R, out]`` for an ensemble)."""
        task = torch.as_tensor(task, device=x.device).long()
        self._renorm(task)
        w = self._task_emb.weight
        # a copy: the weights are renormalised in place when the next batch's tasks are looked up
        table = w.detach() if detach or not torch.is_grad_enabled() else w.clone()
        return self._after_first(net, folded_first_layer(net[0], x, task, table, extra, heads), heads)

    def _broadcast(self, net: nn.Sequential, x: torch.Tensor, task: torch.Tensor,
                   extra: torch.Tensor | None = None, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``net([x, emb(task), extra])`` for one task per environment (``task [N, 1]``, ``x [N, S, k]``)."""
        w_xa, w_e, b = self._arranged(net[0])
        if heads is not None:
            w_xa, w_e, b = net[0].select(heads, w_xa, w_e, b)
        return self._after_first(net, broadcast_first_layer((w_xa, w_e, b), x, self.task_vectors(task), extra), heads)

    # --------------------------------------------------------------- planning: first layers arranged once per call
    def arrange_planning(self) -> None:
        """Arrange the first layers that planning reads (:func:`.fold.arrange_first_layer`), again only where the
        weights changed. Compiled planning code reads what the last call arranged: the planner calls this at the
        start of every planning call."""
        for layers in ((self._dynamics[0], self._reward[0]), (self._pi[0],), (self._Qs[0],)):
            if all(map(_fused, layers)):
                self._arranged(*layers)

    def _arranged(self, *layers: nn.Module) -> tuple[torch.Tensor, ...]:
        """``layers``' first-layer weights concatenated on the output dimension and arranged, kept in place
        (same tensors) until a weight changes."""
        cache, key = self.__dict__.setdefault("_arrangement", {}), tuple(id(layer) for layer in layers)
        if torch.compiler.is_compiling():
            return cache[key][1] if key in cache else self._arrange(layers)
        version = tuple((p.data_ptr(), p._version) for layer in layers for p in (layer.weight, layer.bias))
        entry = cache.get(key)
        if entry is None or entry[0] != version:
            with torch.inference_mode(False), torch.no_grad():
                new = self._arrange(layers)
                if entry is not None and all(a.shape == b.shape for a, b in zip(entry[1], new)):
                    new = tuple(a if a is b else a.copy_(b) for a, b in zip(entry[1], new))  # a bias is the parameter itself
            cache[key] = (version, new)
        return cache[key][1]

    def _arrange(self, layers: tuple[nn.Module, ...]) -> tuple[torch.Tensor, ...]:
        weight, bias = (torch.cat(t, -2 if t[0].dim() == 3 else 0) if len(t) > 1 else t[0]
                        for t in zip(*((layer.weight, layer.bias) for layer in layers)))
        k = weight.shape[-1] - self.cfg.task_dim - (0 if layers[0] is self._pi[0] else self.cfg.action_dim)
        return arrange_first_layer(weight, bias, k, self.cfg.task_dim)

    @staticmethod
    def _after_first(net: nn.Sequential, y: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """``net`` from the first layer's linear output ``y`` on (its tail, then the other layers)."""
        ensemble = isinstance(net[0], FusedEnsembleLinear)
        y = net[0].tail(y, heads) if ensemble else net[0].tail(y)
        for layer in itertools.islice(net, 1, None):
            y = layer(y, heads) if ensemble else layer(y)
        return y

    # --------------------------------------------------------------- components
    def encode(self, obs: torch.Tensor, task: TaskLike) -> torch.Tensor:
        net = self._encoder["state"]
        if self._foldable(net[0], obs):
            return self._folded(net, obs, task).reshape(*obs.shape[:-1], self.cfg.latent_dim)
        return super().encode(obs, task)

    def next(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        if _fused(self._dynamics[0]) and self._per_env(z, task):
            return self._broadcast(self._dynamics, z, task, a)
        if self._foldable(self._dynamics[0], z):
            return self._folded(self._dynamics, z, task, a).reshape(z.shape)
        return super().next(z, a, task)

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> torch.Tensor:
        if _fused(self._reward[0]) and self._per_env(z, task):
            return self._broadcast(self._reward, z, task, a)
        if self._foldable(self._reward[0], z):
            return self._folded(self._reward, z, task, a).reshape(*z.shape[:-1], self.cfg.num_bins)
        return super().reward(z, a, task)

    def next_and_reward(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One first-layer matmul of width 2·mlp_dim for the dynamics and the reward head (planning calls)."""
        dyn, rew = self._dynamics, self._reward
        if not (_fused(dyn[0]) and _fused(rew[0]) and self._per_env(z, task)):
            return super().next_and_reward(z, a, task)
        M = dyn[0].out_features
        y = broadcast_first_layer(self._arranged(dyn[0], rew[0]), z, self.task_vectors(task), a)
        return self._after_first(dyn, y[..., :M].contiguous()), self._after_first(rew, y[..., M:].contiguous())

    def pi(self, z: torch.Tensor, task: TaskLike, generator: torch.Generator | None = None, detach: bool = False,
           eps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        if _fused(self._pi[0]) and self._per_env(z, task) and not detach:
            return self._policy(self._broadcast(self._pi, z, task), task, generator, eps)
        if self._foldable(self._pi[0], z):
            out = self._folded(self._pi, z, task, detach=detach).reshape(*z.shape[:-1], 2 * self.cfg.action_dim)
            return self._policy(out, task, generator, eps)
        return super().pi(z, task, generator, detach, eps)

    def Q(self, z: torch.Tensor, a: torch.Tensor, task: TaskLike, return_type: str = "min", target: bool = False,
          detach: bool = False, generator: torch.Generator | None = None,
          heads: torch.Tensor | None = None) -> torch.Tensor:
        net = self._target_Qs if target else self._Qs
        per_env = _fused(net[0]) and self._per_env(z, task) and not detach
        if not (per_env or self._foldable(net[0], z)) or return_type not in ("min", "avg", "all"):
            return super().Q(z, a, task, return_type, target, detach, generator, heads)
        heads = self._q_heads(return_type, heads, generator, z.device)
        if per_env:
            logits = self._broadcast(net, z, task, a, heads)
        else:
            with frozen(net, detach):
                logits = self._folded(net, z, task, a, heads, detach)
        return self._q_values(logits, z.shape[:-1], return_type)
