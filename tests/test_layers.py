"""Layers: the dropout sampler's distribution, fused vs eager training-mode layers, detached Q heads."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from tdmpc_opt_lib import fast
from tdmpc_opt_lib.fast import kernels
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.fast.fused import FusedEnsembleLinear, dropout_ln_mish, dropout_scale, fused_dropout_ln_act
from tdmpc_opt_lib.layers import EnsembleLinear, SimNorm
from tdmpc_opt_lib.world_model import WorldModel


@pytest.mark.parametrize("p", [0.01, 0.3, 0.9])
def test_dropout_scale_is_independent_bernoulli(p):
    """Each element is dropped with probability p, independently: the drop count per draw has the binomial
    mean and variance, every position is dropped at rate p, neighbours are uncorrelated."""
    torch.manual_seed(0)
    n, draws = 500, 4000
    s = torch.stack([dropout_scale((20, 25), p) for _ in range(draws)]).view(draws, n)
    assert torch.isclose(s, torch.tensor(1 / (1 - p))).logical_or(s == 0).all()
    dropped = (s == 0).double()
    counts = dropped.sum(1)
    se_mean = math.sqrt(n * p * (1 - p) / draws)
    assert abs(counts.mean().item() - n * p) < 5 * se_mean
    var = n * p * (1 - p)
    assert abs(counts.var().item() / var - 1) < 5 * math.sqrt(2 / draws)       # chi-square spread
    per_pos = dropped.mean(0)
    assert (per_pos - p).abs().max().item() < 5 * math.sqrt(p * (1 - p) / draws)
    neighbours = torch.corrcoef(torch.stack([dropped[:, :-1].reshape(-1), dropped[:, 1:].reshape(-1)]))[0, 1]
    assert abs(neighbours.item()) < 5 / math.sqrt(draws * (n - 1))


def test_dropout_scale_large_tensor_and_bad_probability():
    torch.manual_seed(1)
    s = dropout_scale((2, 768, 384), 0.01)
    assert abs((s == 0).double().mean().item() - 0.01) < 5 * math.sqrt(0.01 * 0.99 / s.numel())
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout_scale((3,), bad)


def test_fused_and_eager_ensemble_agree_in_training_mode():
    """With the same seed the fused layer and the eager reference draw the same dropout mask and agree."""
    torch.manual_seed(0)
    eager = EnsembleLinear(2, 16, 32, dropout=0.2).train()
    fused = copy.deepcopy(eager)
    fused.__class__ = FusedEnsembleLinear
    x = torch.randn(64, 16)

    def reference(layer, x):
        y = torch.bmm(x.expand(2, *x.shape), layer.weight.transpose(1, 2))
        return dropout_ln_mish(y, layer.ln.weight.unsqueeze(1), layer.ln.bias.unsqueeze(1), 0.2, True,
                               layer.bias.unsqueeze(1))
    outs = []
    for layer, run in ((eager, reference), (fused, lambda layer, x: layer(x))):
        torch.manual_seed(5)
        y = run(layer, x)
        y.square().mean().backward()
        outs.append((y.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(eager.eval()(x), outs[0][0])        # dropout was active in training mode


def test_detached_q_gives_input_gradients_only():
    torch.manual_seed(0)
    m = WorldModel(model_config(1, "mt30")).train()
    torch.nn.init.normal_(m._Qs[-1].weight)             # initialised to zero: Q would not depend on a
    z = torch.randn(8, m.cfg.latent_dim)
    a = torch.zeros(8, m.cfg.action_dim, requires_grad=True)
    m.Q(z, a, 0, "avg", detach=True).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in m._Qs.parameters())
    assert all(p.requires_grad for p in m._Qs.parameters())


@pytest.mark.parametrize("backend", ["c", "compiled"])
@pytest.mark.parametrize("simnorm", [0, 8])
@pytest.mark.parametrize("shape, wshape, dropout, pre", [((6, 40), (40,), 0.0, False), ((2, 9, 40), (2, 1, 40), 0.3, True)])
def test_fused_ln_act_gradients_match_autograd(shape, wshape, dropout, pre, simnorm, backend, monkeypatch):
    """The hand-derived backward of the fused LayerNorm+Mish / LayerNorm+SimNorm kernel (the C one, and the
    compiled one that other devices use) against autograd of the eager ops, including saturated
    pre-activations (beyond 20, where the exp is clamped, and far below 0)."""
    if backend == "c":
        if not kernels.compiler():
            pytest.skip("no C compiler on PATH")
        assert kernels.supports(torch.zeros(shape), torch.zeros(wshape), torch.zeros(wshape)), "C kernels failed"
    else:
        monkeypatch.setattr(kernels, "supports", lambda *args: False)
    torch.manual_seed(0)
    y = (torch.randn(shape) * 30).requires_grad_()
    w, b = (torch.randn(wshape) * 15).requires_grad_(), torch.randn(wshape).requires_grad_()
    pb = torch.randn(wshape).requires_grad_() if pre else None
    g = torch.randn(shape)
    act = SimNorm(simnorm) if simnorm else torch.nn.functional.mish

    def eager(y, w, b, p, training, pb):
        u = (y + pb if pb is not None else y) * (dropout_scale(y.shape, p) if p else 1)
        return act(torch.nn.functional.layer_norm(u, u.shape[-1:]) * w + b)

    results = []
    for fn in (eager, lambda *args: fused_dropout_ln_act(*args, simnorm=simnorm)):
        torch.manual_seed(1)
        out = fn(y, w, b, dropout, True, pb)
        grads = torch.autograd.grad(out, [t for t in (y, w, b, pb) if t is not None], g)
        results.append((out.detach(), *grads))
    for e, f in zip(*results):
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-4)
    if not simnorm:
        assert (results[0][0].abs() > 20).any()                      # the saturated range was exercised


def test_detached_q_action_gradient_equals_full_autograd():
    """Q(detach=True) splits the action off layer 0's matmul; its gradient w.r.t. the action is the one plain
    autograd gives through the concatenated input (eval: no dropout), and the task embedding gets none."""
    torch.manual_seed(0)
    m = WorldModel(model_config(1, "mt30")).eval()
    torch.nn.init.normal_(m._Qs[-1].weight, std=0.1)
    z, task = torch.randn(2, 8, m.cfg.latent_dim), torch.arange(8)
    grads = []
    for detach in (False, True):
        a = (torch.rand(2, 8, m.cfg.action_dim) * 2 - 1).requires_grad_() if not grads else a.detach().requires_grad_()
        q = m.Q(z, a, task, "avg", detach=detach)
        q.sum().backward()
        grads.append((q.detach(), a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)
    m.zero_grad(set_to_none=True)
    m.Q(z, a.detach().requires_grad_(), task, "avg", detach=True).sum().backward()
    assert m._task_emb.weight.grad is None


@pytest.mark.parametrize("accelerated", [False, True])
def test_task_vectors_renormalise_like_embedding_max_norm(accelerated):
    """Rows looked up are rescaled in place to norm 1 when longer (exactly nn.Embedding(max_norm=1)); rows not
    looked up are left alone."""
    torch.manual_seed(0)
    m = WorldModel(model_config(1, "mt30"))
    m = fast.accelerate(m) if accelerated else m
    with torch.no_grad():
        m._task_emb.weight.normal_()                              # every row longer than 1
    ref = torch.nn.Embedding.from_pretrained(m._task_emb.weight.clone(), freeze=False, max_norm=1)
    task = torch.tensor([[3, 5], [3, 7]])
    torch.testing.assert_close(m.task_vectors(task), ref(task), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m._task_emb.weight, ref.weight, rtol=1e-6, atol=1e-7)
    norms = m._task_emb.weight.norm(dim=1)
    assert torch.allclose(norms[[3, 5, 7]], torch.ones(3)) and (norms[[0, 1, 2, 4, 6]] > 1).all()


def test_task_vectors_renormalise_again_after_any_change():
    """The rescaling is skipped only while neither the weights nor the task tensor changed: an optimizer-like
    in-place update, a new task tensor, an in-place edit of the same task tensor and swapped-in weight data
    each trigger it again."""
    m = fast.accelerate(WorldModel(model_config(1, "mt30")))      # the plain model renormalises on every lookup
    w = m._task_emb.weight
    task = torch.tensor([1, 2])

    def longest(rows):
        return float(w.detach()[rows].norm(dim=1).max())

    with torch.no_grad():
        w.normal_()
    m.task_vectors(task)
    assert longest([1, 2]) <= 1 + 1e-6 and longest([4]) > 1
    with torch.no_grad():
        w.mul_(5)                                                   # in place, as Adam's step
    m.task_vectors(task)
    assert longest([1, 2]) <= 1 + 1e-6
    m.task_vectors(torch.tensor([4]))                               # another task tensor
    assert longest([4]) <= 1 + 1e-6
    task[0] = 9                                                     # the same tensor, edited
    m.task_vectors(task)
    assert longest([9]) <= 1 + 1e-6
    w.data = torch.randn_like(w) * 5                                # new storage
    m.task_vectors(task)
    assert longest([2, 9]) <= 1 + 1e-6



def test_shared_input_matmul_gradients():
    """``y += x·w_hᵀ`` per head (in place) with the shared input's gradient computed transposed: gradcheck in
    float64."""
    from tdmpc_opt_lib.fast.fold import _AddSharedMatmul
    torch.manual_seed(0)
    y = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, x, w: _AddSharedMatmul.apply(y.clone(), x, w), (y, x, w))


def test_shared_rows_matmul():
    """``x·w_hᵀ`` per head for a shared ``x``, on column slices of the weights as the folded first layers pass
    them: the bmm over the expanded input, and gradcheck in float64."""
    from tdmpc_opt_lib.fast.fold import _SharedRowsMatmul
    torch.manual_seed(0)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w_full = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    run = lambda x, w_full: _SharedRowsMatmul.apply(x, w_full[..., 2:6])
    torch.testing.assert_close(run(x, w_full), torch.bmm(x.expand(3, 7, 4), w_full[..., 2:6].transpose(1, 2)))
    assert torch.autograd.gradcheck(run, (x, w_full))


@pytest.mark.parametrize("lead", [(), (3,)])
def test_task_rows_gradients(lead):
    """``y += P[task]`` over H row blocks (``lead``: an ensemble dim or none), its per-task gradient summed with
    index_add: gradcheck in float64, repeated tasks included."""
    from tdmpc_opt_lib.fast.fold import _AddTaskRows
    torch.manual_seed(0)
    task = torch.tensor([2, 0, 2, 1])
    y = torch.randn(*lead, 3 * 4, 5, dtype=torch.float64, requires_grad=True)
    P = torch.randn(*lead, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, P: _AddTaskRows.apply(y.clone(), P, task), (y, P))
