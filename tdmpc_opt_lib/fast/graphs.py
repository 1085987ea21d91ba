"""A whole training update captured once as a CUDA graph and replayed (no kernel launches from Python per update).

The update's inputs are copied into static buffers; :meth:`CapturedUpdate.__call__` replays the graph and returns
copies of its metrics. The learner's optimizers must be ``capturable`` Adams and every tensor the update reads
or writes must stay where it is (the running Q scale and the target Qs are updated in place). Warm-up updates on
a side stream come first (they compile the fused kernels and allocate the optimizer state); they are real
updates and count as such.
"""
from __future__ import annotations

import torch


class CapturedUpdate:
    """``learner.update`` as a CUDA graph; the first ``warmup`` calls run eagerly, the next one captures."""

    def __init__(self, learner, warmup: int = 3):
        for opt in (learner.optim, learner.pi_optim):
            if not opt.defaults.get("capturable"):
                raise ValueError("a captured update needs Adam optimizers with capturable=True")
        self.learner, self.warmup = learner, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.stream = torch.cuda.Stream()

    def __call__(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is not None:
            for k, v in batch.items():
                self.static[k].copy_(v, non_blocking=True)
            self.graph.replay()
            return {k: v.clone() for k, v in self.out.items()}
        self.calls += 1
        self.stream.wait_stream(torch.cuda.current_stream())
        if self.calls <= self.warmup:
            with torch.cuda.stream(self.stream):
                out = self.learner.update(**batch)
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        self.static = {k: v.clone() for k, v in batch.items()}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.out = self.learner.update(**self.static)
        torch.cuda.current_stream().wait_stream(self.stream)
        self.graph = graph
        graph.replay()             # capturing records the update without running it
        return {k: v.clone() for k, v in self.out.items()}
