"""Partial FC against a plain full-softmax reference, in one process and in two gloo processes."""
from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from heads import build_margin, list_heads
from partial_fc import SGD, PartialFC, _SampledCosine, shard_range

EMBEDDING = 16
TOL = {"rtol": 1e-5, "atol": 1e-5}


def margin(name):
    return build_margin(name)


def reference_loss(margin, embeddings, kernel, labels, yaw):
    """CrossEntropyLoss(margin(cos, labels)) over all classes in one tensor, + the margin's regularizer."""
    norms = embeddings.norm(dim=1)
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(kernel, dim=0)
    logits = margin(cosine, labels, yaw=yaw, norms=norms)
    return nn.CrossEntropyLoss()(logits, labels) + margin.regularizer(norms)


def reference_grads(margin, embeddings, kernel, labels, yaw):
    embeddings = embeddings.clone().requires_grad_()
    kernel = kernel.clone().requires_grad_()
    loss = reference_loss(margin, embeddings, kernel, labels, yaw)
    loss.backward()
    return loss.detach(), embeddings.grad, kernel.grad


def pfc_step(module, embeddings, labels, yaw):
    """One Partial FC step with the features' norms passed as the backbones return them."""
    x = embeddings.clone().requires_grad_()
    loss = module(x, labels, yaw=yaw, norms=x.norm(dim=1))
    loss.backward()
    return loss.detach(), x.grad


def kernel_grad(module):
    """`module.kernel.grad` as a dense (E, num_local) tensor, whichever layout the module uses."""
    grad = module.kernel.grad
    return grad.to_dense().t() if grad.is_sparse else grad


def problem(num_classes=11, batch=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, EMBEDDING, generator=generator) * 3
    kernel = torch.randn(EMBEDDING, num_classes, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    labels[:2] = torch.tensor([0, num_classes - 1])  # a target on each shard
    # some rows near their centre, so that both branches of the margin run
    embeddings[2:5] = kernel[:, labels[2:5]].t() * 2 + 0.1 * embeddings[2:5]
    embeddings[5] = -3 * kernel[:, labels[5]]  # opposite its centre: the margins' fallback branch
    yaw = torch.rand(batch, generator=generator) * 180 - 90
    return embeddings, kernel, labels, yaw


def partial_fc(kernel, margin, **kw):
    module = PartialFC(kernel.shape[0], kernel.shape[1], margin, **kw)
    module.load_full_state_dict({"kernel": kernel})
    return module


# ------------------------------------------------------------------------------------ one process

@pytest.mark.parametrize("name", list_heads())
def test_world_size_one_equals_full_softmax(name):
    embeddings, kernel, labels, yaw = problem()
    want_loss, want_grad_x, want_grad_kernel = reference_grads(margin(name), embeddings, kernel, labels, yaw)
    module = partial_fc(kernel, margin(name))
    loss, grad_x = pfc_step(module, embeddings, labels, yaw)
    torch.testing.assert_close(loss, want_loss, **TOL)
    torch.testing.assert_close(grad_x, want_grad_x, **TOL)
    torch.testing.assert_close(module.kernel.grad, want_grad_kernel, **TOL)
    assert module.kernel.grad.stride() == module.kernel.stride()  # adopted by autograd without a copy


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_sampled_step_is_the_softmax_over_the_sampled_centres(sparse_grad):
    embeddings, kernel, labels, yaw = problem(num_classes=40)
    module = partial_fc(kernel, margin("pgaml"), sample_rate=0.5, sparse_grad=sparse_grad)
    torch.manual_seed(0)
    loss, grad_x = pfc_step(module, embeddings, labels, yaw)
    index = module.sampled_index
    want_loss, want_grad_x, want_sub_grad = reference_grads(
        margin("pgaml"), embeddings, kernel[:, index], torch.searchsorted(index, labels), yaw)
    torch.testing.assert_close(loss, want_loss, **TOL)
    torch.testing.assert_close(grad_x, want_grad_x, **TOL)
    torch.testing.assert_close(kernel_grad(module)[:, index], want_sub_grad, **TOL)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[index] = False
    assert torch.all(kernel_grad(module)[:, unsampled] == 0)
    if sparse_grad:  # only the sampled rows are stored
        grad = module.kernel.grad
        assert grad.is_sparse and grad.shape == (40, EMBEDDING)
        assert torch.equal(grad._indices()[0], index) and grad._values().shape == (index.numel(), EMBEDDING)


def test_sampling_keeps_positives_matches_rate_and_follows_the_seed():
    module = PartialFC(EMBEDDING, 100, margin("arcface"), sample_rate=0.1)
    few = torch.tensor([3, 3, 57, 99, 12])
    torch.manual_seed(1)
    index, columns = module.sample(few)
    assert index.numel() == 10 and set(few.tolist()) <= set(index.tolist())
    assert torch.equal(index[columns], few) and torch.equal(index, index.sort().values)
    torch.manual_seed(1)
    assert torch.equal(module.sample(few)[0], index)
    torch.manual_seed(2)
    assert not torch.equal(module.sample(few)[0], index)
    many = torch.arange(0, 60, 2)  # more positives than 10% of the centres: all of them, nothing else
    assert torch.equal(module.sample(many)[0], many)
    not_local = torch.tensor([-1, 5, -1])
    index, columns = module.sample(not_local)
    assert columns[0] == -1 and columns[2] == -1 and index[columns[1]] == 5
    assert PartialFC(EMBEDDING, 100, margin("arcface"), sample_rate=1.0).sample(few)[0] is None


def test_state_round_trip_accuracy_and_errors():
    embeddings, kernel, _, _ = problem()
    module = partial_fc(kernel, margin("arcface"))
    assert torch.equal(module.full_state_dict()["kernel"], kernel)
    assert module.num_local == 11 and module.class_start == 0
    with pytest.raises(ValueError, match="shape"):
        module.load_full_state_dict({"kernel": torch.zeros(EMBEDDING, 12)})
    with pytest.raises(ValueError, match="labels"):
        module(embeddings, torch.full((8,), 11))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(EMBEDDING, 11, margin("arcface"), sample_rate=0.0)
    kernel[:, :3] = embeddings[:3].t()  # each of these samples sits on its own centre: cosine 1
    module.load_full_state_dict({"kernel": kernel})
    assert module.accuracy(embeddings[:3], torch.tensor([0, 1, 2])) == 1.0
    assert module.accuracy(embeddings[:3], torch.tensor([1, 1, 1])) == pytest.approx(1 / 3)


def reference_statistics(embeddings, kernel, labels) -> dict[str, float]:
    """forward_statistics written out over the full (B, C) cosine matrix and the explicit pair matrices."""
    x, w = F.normalize(embeddings.double(), dim=1), F.normalize(kernel.double(), dim=0)
    cosine, rows = x @ w, torch.arange(len(labels))
    target = cosine[rows, labels]
    others = cosine.clone()
    others[rows, labels] = -torch.inf

    def off_diagonal_mean(gram):
        n = gram.shape[0]
        return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
    return {"accuracy": float((cosine.argmax(dim=1) == labels).double().mean()), "target_cos": float(target.mean()),
            "target_angle_deg": float(torch.rad2deg(torch.acos(target.clamp(-1, 1))).mean()),
            "max_other_cos": float(others.amax(dim=1).mean()), "batch_pair_cos": off_diagonal_mean(x @ x.t()),
            "centre_pair_cos": off_diagonal_mean(w.t() @ w)}


# acos is steep at cos = +-1 (problem() puts a sample opposite its centre): a float32 cosine one rounding step off
# -1 moves its angle by up to sqrt(2 * 2**-23) rad = 0.028 deg, and the float32 result depends on the kernels'
# summation order (threads, SIMD width), so the float64 reference is met to 0.01 deg, not 1e-5
ABS_TOLERANCE = {"target_angle_deg": 0.01}


def assert_statistics_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=ABS_TOLERANCE.get(name, 1e-5)), name


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_forward_statistics_are_those_of_the_forward_pass_and_only_when_asked(sparse_grad):
    embeddings, kernel, labels, yaw = problem()
    module = partial_fc(kernel, margin("pgaml"), sparse_grad=sparse_grad)
    pfc_step(module, embeddings, labels, yaw)
    assert module.statistics == {}   # ordinary steps compute nothing
    module.record_statistics = True
    pfc_step(module, embeddings, labels, yaw)
    want = reference_statistics(embeddings, kernel, labels)
    assert_statistics_close(module.statistics, want)
    assert 0 < want["accuracy"] < 1   # the problem has hits and misses


def test_forward_statistics_with_sampling_cover_the_columns_used():
    embeddings, kernel, labels, yaw = problem(num_classes=40)
    module = partial_fc(kernel, margin("arcface"), sample_rate=0.5)
    module.record_statistics = True
    torch.manual_seed(0)
    pfc_step(module, embeddings, labels, yaw)
    index = module.sampled_index
    want = reference_statistics(embeddings, kernel[:, index], torch.searchsorted(index, labels))
    want["centre_pair_cos"] = reference_statistics(embeddings, kernel, labels)["centre_pair_cos"]  # all classes
    assert_statistics_close(module.statistics, want)


def test_centre_pair_cosine_is_exact_and_reads_in_chunks():
    _, kernel, _, _ = problem(num_classes=40)
    module = partial_fc(kernel, margin("arcface"))
    want = reference_statistics(torch.randn(2, EMBEDDING), kernel, torch.tensor([0, 1]))["centre_pair_cos"]
    assert module.centre_pair_cosine() == pytest.approx(want, abs=1e-12)
    assert module.centre_pair_cosine(chunk=7) == pytest.approx(want, abs=1e-12)
    same = partial_fc(kernel[:, :1].repeat(1, 5), margin("arcface"))   # every centre alike: a collapse
    assert same.centre_pair_cosine() == pytest.approx(1.0)


def test_shard_ranges_cover_all_classes_evenly():
    for num_classes, world in [(11, 2), (1_000_000, 8), (7, 7), (10, 3)]:
        ranges = [shard_range(num_classes, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


# ------------------------------------------------------------------------- sparse gradient and SGD

class _DenseGrad(torch.autograd.Function):
    """Identity whose backward densifies the gradient (gradcheck compares dense layouts only)."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad.to_dense()


@pytest.mark.parametrize("index", [torch.tensor([1, 4, 9]), None])
def test_sparse_kernel_gradient_passes_gradcheck(index):
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 5, dtype=torch.float64, generator=generator).requires_grad_()
    x_hat = F.normalize(torch.randn(3, 5, dtype=torch.float64, generator=generator), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, r: _SampledCosine.apply(x, _DenseGrad.apply(r), index, True),
                                    (x_hat, rows))


def test_sparse_layout_keeps_treb1en_state_dict():
    _, kernel, _, _ = problem(num_classes=40)
    sparse = partial_fc(kernel, margin("arcface"), sample_rate=0.5)
    assert sparse.sparse_grad and sparse.kernel.shape == (40, EMBEDDING)  # class-major rows
    assert not PartialFC(EMBEDDING, 40, margin("arcface"), sample_rate=0.5, sparse_grad=False).sparse_grad
    assert not PartialFC(EMBEDDING, 40, margin("arcface")).sparse_grad
    assert torch.equal(sparse.state_dict()["kernel"], kernel)  # (E, C) whatever the layout
    assert torch.equal(sparse.full_state_dict()["kernel"], kernel)
    torch.manual_seed(3)
    dense_twin = PartialFC(EMBEDDING, 40, margin("arcface"), sample_rate=0.5, sparse_grad=False)
    torch.manual_seed(3)  # the same initial centres in either layout
    assert torch.equal(PartialFC(EMBEDDING, 40, margin("arcface"), sample_rate=0.5).state_dict()["kernel"],
                       dense_twin.state_dict()["kernel"])
    dense_twin.load_state_dict(sparse.state_dict())
    assert torch.equal(dense_twin.kernel, kernel)
    sparse.load_state_dict({"kernel": dense_twin.kernel.detach() * 2})
    assert torch.equal(sparse.kernel, 2 * kernel.t())
    with pytest.raises(ValueError, match="shape"):
        sparse.load_full_state_dict({"kernel": torch.zeros(EMBEDDING, 12)})


def _trainer_setup(sparse_grad, optimizer_class=SGD, **options):
    """The trainer's wiring: a backbone stand-in and the head in two param groups, a scheduler."""
    torch.manual_seed(1)
    backbone = nn.Linear(4, EMBEDDING)
    head = PartialFC(EMBEDDING, 40, margin("arcface"), sample_rate=0.25, sparse_grad=sparse_grad)
    optimizer = optimizer_class([{"params": [backbone.weight, head.kernel], "weight_decay": 5e-4},
                                 {"params": [backbone.bias], "weight_decay": 0.0}], lr=0.1, **options)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return backbone, head, optimizer, scheduler


TRAIN_INPUTS = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
TRAIN_LABELS = torch.tensor([0, 5, 5, 17, 33, 39])


def _train_step(backbone, head, optimizer, scheduler=None, scaler=None):
    torch.manual_seed(5)  # the same sampled centres at every step
    optimizer.zero_grad()
    loss = head(backbone(TRAIN_INPUTS), TRAIN_LABELS)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if scheduler is not None:
        scheduler.step()


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {},
                                     {"momentum": 0.9, "dampening": 0.1, "maximize": True}])
def test_lazy_sgd_matches_torch_sgd_on_sampled_rows(options):
    lazy = _trainer_setup(True, **options)
    reference = _trainer_setup(False, torch.optim.SGD, **options)
    start = lazy[1].kernel.detach().clone()
    for _ in range(3):
        _train_step(*lazy)
        _train_step(*reference)
    backbone, head, optimizer, _ = lazy
    assert head.kernel.grad.is_sparse
    for mine, want in zip(backbone.parameters(), reference[0].parameters()):
        assert torch.equal(mine, want)  # dense gradients: torch.optim.SGD itself
    index = head.sampled_index
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[index] = False
    torch.testing.assert_close(head.kernel[index], reference[1].kernel.t()[index], rtol=0, atol=1e-7)
    assert torch.equal(head.kernel[unsampled], start[unsampled])  # no weight decay, no momentum drift
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 3  # the scheduler drives every group
    if options.get("momentum"):
        buffer = optimizer.state[head.kernel]["momentum_buffer"]
        want = reference[2].state[reference[1].kernel]["momentum_buffer"].t()
        assert buffer.shape == head.kernel.shape
        torch.testing.assert_close(buffer[index], want[index], rtol=0, atol=1e-7)
        assert torch.all(buffer[unsampled] == 0)


def test_lazy_sgd_sums_accumulated_micro_batches():
    """Two backward passes with different samples: autograd adds the sparse gradients, SGD applies the sum."""
    lazy = _trainer_setup(True)
    reference = _trainer_setup(False, torch.optim.SGD)
    for backbone, head, optimizer, _ in (lazy, reference):
        for seed in (5, 6):
            torch.manual_seed(seed)
            head(backbone(TRAIN_INPUTS), TRAIN_LABELS).backward()
        optimizer.param_groups[0]["weight_decay"] = 0.0  # plain SGD moves only rows with a gradient
        optimizer.step()
    torch.testing.assert_close(lazy[1].kernel, reference[1].kernel.t(), rtol=0, atol=1e-7)


def test_lazy_sgd_coalesces_repeated_rows():
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    rows, values = torch.tensor([[3, 1, 3]]), torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    lazy, dense = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    optimizers = [SGD([lazy], lr=0.1, momentum=0.9, weight_decay=0.1),
                  torch.optim.SGD([dense], lr=0.1, momentum=0.9, weight_decay=0.1)]
    for _ in range(2):
        lazy.grad = torch.sparse_coo_tensor(rows, values, (6, 3), check_invariants=True)
        dense.grad = lazy.grad.to_dense()
        for optimizer in optimizers:
            optimizer.step()
    touched = torch.tensor([1, 3])
    torch.testing.assert_close(lazy[touched], dense[touched], rtol=0, atol=1e-7)
    untouched = torch.tensor([0, 2, 4, 5])
    assert torch.equal(lazy[untouched], start[untouched])


def test_lazy_sgd_runs_step_hooks_once_and_closures():
    torch.optim.SGD([nn.Parameter(torch.zeros(1))])  # torch now wraps torch.optim.SGD.step for its hooks
    backbone, head, optimizer, _ = _trainer_setup(True, momentum=0.9)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))

    def closure():
        optimizer.zero_grad()
        loss = head(backbone(TRAIN_INPUTS), TRAIN_LABELS)
        loss.backward()
        return loss

    before = head.kernel.detach().clone()
    assert torch.isfinite(optimizer.step(closure))
    assert calls == ["pre", "post"]
    assert not torch.equal(head.kernel, before)


def test_grad_scaler_unscales_the_sparse_gradient_and_skips_on_inf():
    plain = _trainer_setup(True, momentum=0.9)
    scaled = _trainer_setup(True, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(2):
        _train_step(*plain)
        _train_step(*scaled, scaler=scaler)
    for mine, want in zip([*scaled[0].parameters(), scaled[1].kernel], [*plain[0].parameters(), plain[1].kernel]):
        torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-7)
    backbone, head, optimizer, _ = scaled
    before = head.kernel.detach().clone()
    optimizer.zero_grad()
    scaler.scale(head(backbone(TRAIN_INPUTS), TRAIN_LABELS)).backward()
    head.kernel.grad._values()[0, 0] = float("inf")  # an overflow in the sparse gradient alone
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(head.kernel, before) and scaler.get_scale() == 2.0 ** 9


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_sgd_updates_dense_and_lazy_rows_as_unfused_and_skips_on_inf(scaled):
    """--fused_sgd: torch's fused kernel for the dense parameters, the lazy update for the sparse rows; under a
    GradScaler both see unscaled gradients (the fused kernel is not handed the scale the lazy rows would miss)."""
    runs = [_trainer_setup(True, momentum=0.9, fused=fused) for fused in (False, True)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaled else None for _ in runs]
    for _ in range(3):
        for run, scaler in zip(runs, scalers):
            _train_step(*run, scaler=scaler)
    (plain_net, plain_head, *_), (fused_net, fused_head, optimizer, _) = runs
    assert optimizer.param_groups[0]["fused"] and fused_head.kernel.grad.is_sparse
    for mine, want in zip([*fused_net.parameters(), fused_head.kernel], [*plain_net.parameters(), plain_head.kernel]):
        torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-7)
    if scaled:
        before = [p.detach().clone() for p in (*fused_net.parameters(), fused_head.kernel)]
        optimizer.zero_grad()
        scalers[1].scale(fused_head(fused_net(TRAIN_INPUTS), TRAIN_LABELS)).backward()
        fused_net.bias.grad[0] = float("inf")  # an overflow in a dense, fused-updated gradient
        scalers[1].step(optimizer)
        assert all(torch.equal(p, b) for p, b in zip((*fused_net.parameters(), fused_head.kernel), before))


def test_fused_sgd_steps_a_group_whose_parameters_start_at_different_steps():
    """A frozen backbone's parameters get their first gradient after the centres': torch's fused kernel refuses a
    group with some momentum buffers made and some not; that step runs unfused, and every step equals torch's."""
    runs = []
    for fused in (False, True):
        torch.manual_seed(0)
        early, late = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3))
        optimizer = SGD([early, late], lr=0.1, momentum=0.9, weight_decay=1e-3, fused=fused)
        for step in range(3):
            early.grad = torch.full((5,), 0.5 + step)
            late.grad = None if step == 0 else torch.full((3,), 1.0 - step)
            optimizer.step()
        assert optimizer.param_groups[0]["fused"] == fused
        runs.append((early.detach().clone(), late.detach().clone()))
    for mine, want in zip(runs[1], runs[0]):
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-7)


def test_loaded_optimizer_state_keeps_the_optimisers_own_fused_setting():
    saved = _trainer_setup(True, momentum=0.9, fused=False)
    _train_step(*saved)
    backbone, head, optimizer, _ = _trainer_setup(True, momentum=0.9, fused=True)
    optimizer.load_state_dict(saved[2].state_dict())
    assert [g["fused"] for g in optimizer.param_groups] == [True, True]
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.05]  # the hyper-parameters: from the state
    torch.testing.assert_close(optimizer.state[head.kernel]["momentum_buffer"],
                               saved[2].state[saved[1].kernel]["momentum_buffer"])


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_checkpoint_round_trip_of_kernel_optimizer_state(sparse_grad):
    """The trainer's checkpoint: the kernel's entry leaves the optimizer's state dict, its full momentum
    is saved beside it; resuming continues exactly as the uninterrupted run."""
    backbone, head, optimizer, _ = _trainer_setup(sparse_grad, momentum=0.9)
    assert head.full_optimizer_state(optimizer) == {}  # no momentum before the first step
    _train_step(backbone, head, optimizer)
    key = head.optimizer_state_key(optimizer)
    assert key == 1 and head.optimizer_state_key(torch.optim.SGD(backbone.parameters())) is None
    full = head.full_optimizer_state(optimizer)["momentum_buffer"]
    assert full.shape == (EMBEDDING, 40)
    opt_state = optimizer.state_dict()
    assert opt_state["state"].pop(key)["momentum_buffer"].shape == head.kernel.shape
    saved = io.BytesIO()
    torch.save({"backbone": backbone.state_dict(), "head": head.full_state_dict(), "optimizer": opt_state,
                "head_optimizer": head.full_optimizer_state(optimizer)}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    _train_step(backbone, head, optimizer)  # the uninterrupted run

    resumed = _trainer_setup(sparse_grad, momentum=0.9)
    resumed[0].load_state_dict(checkpoint["backbone"])
    resumed[1].load_full_state_dict(checkpoint["head"])
    resumed[2].load_state_dict(checkpoint["optimizer"])
    resumed[1].load_full_optimizer_state(resumed[2], {})  # no-op
    assert resumed[1].kernel not in resumed[2].state
    resumed[1].load_full_optimizer_state(resumed[2], checkpoint["head_optimizer"])
    _train_step(*resumed[:3])
    for mine, want in zip([*resumed[0].parameters(), resumed[1].kernel], [*backbone.parameters(), head.kernel]):
        assert torch.equal(mine, want)
    assert torch.equal(resumed[2].state[resumed[1].kernel]["momentum_buffer"],
                       optimizer.state[head.kernel]["momentum_buffer"])
    with pytest.raises(ValueError, match="momentum_buffer has shape"):
        head.load_full_optimizer_state(optimizer, {"momentum_buffer": torch.zeros(EMBEDDING, 41)})
    with pytest.raises(ValueError, match="does not hold"):
        head.load_full_optimizer_state(torch.optim.SGD(backbone.parameters()), checkpoint["head_optimizer"])
    no_momentum = _trainer_setup(sparse_grad)
    _train_step(*no_momentum)
    assert no_momentum[1].full_optimizer_state(no_momentum[2]) == {}


# ---------------------------------------------------------------------------------- two processes

BATCH_SIZES = [3, 5]  # uneven on purpose, as a last partial batch
EXACT_CASES = ["pgaml", "cosface", "magface", "adaface"]  # compared with one process, no DDP scaling


def _rows(tensor, rank):
    start = sum(BATCH_SIZES[:rank])
    return tensor[start:start + BATCH_SIZES[rank]]


def _step(kernel, name, rank, **kw):
    embeddings, _, labels, yaw = problem(num_classes=kernel.shape[1])
    module = partial_fc(kernel, margin(name), **kw)
    loss, grad_x = pfc_step(module, _rows(embeddings, rank), _rows(labels, rank), _rows(yaw, rank))
    return {"loss": loss, "grad_x": grad_x, "grad_kernel": kernel_grad(module).clone(),
            "sparse": module.kernel.grad.is_sparse,
            "class_start": module.class_start, "num_local": module.num_local,
            "sampled_index": module.sampled_index}


def _distributed_checks(rank, out_dir):
    results = {}
    _, kernel, _, _ = problem()
    for name in EXACT_CASES:
        results[name] = _step(kernel, name, rank, backbone_grads_averaged=False)
    results["ddp"] = _step(kernel, "pgaml", rank)
    _, kernel40, _, _ = problem(num_classes=40)
    torch.manual_seed(rank)
    results["sampled"] = _step(kernel40, "arcface", rank, sample_rate=0.5)
    torch.manual_seed(rank)
    results["sampled_dense"] = _step(kernel40, "arcface", rank, sample_rate=0.5, sparse_grad=False)
    for sparse_grad in (False, True):
        results[f"optimizer_sparse{sparse_grad}"] = _optimizer_state_resharding(kernel40, rank, out_dir, sparse_grad)

    embeddings, _, labels, yaw = problem()
    recording = partial_fc(kernel, margin("pgaml"))
    recording.record_statistics = True
    pfc_step(recording, _rows(embeddings, rank), _rows(labels, rank), _rows(yaw, rank))
    results["statistics"] = recording.statistics
    results["accuracy"] = partial_fc(kernel, margin("arcface")).accuracy(_rows(embeddings, rank),
                                                                         _rows(labels, rank))
    # re-sharding: our own random centres out, the one-process checkpoint in
    torch.manual_seed(100 + rank)
    fresh = PartialFC(EMBEDDING, 11, margin("arcface"))
    full = fresh.full_state_dict()
    results["local_kernel"] = fresh.kernel.detach().clone()
    results["full"] = full.get("kernel")
    results["cosine_out"] = fresh.cosine(embeddings)
    fresh.load_full_state_dict(torch.load(out_dir / "world1.pt", weights_only=True))
    results["kernel_in"] = fresh.kernel.detach().clone()
    results["cosine_in"] = fresh.cosine(embeddings)
    return results


def world1_momentum():
    """A one-process checkpoint's `full_optimizer_state` for 40 classes."""
    return {"momentum_buffer": torch.randn(EMBEDDING, 40, generator=torch.Generator().manual_seed(9))}


def _local_momentum(head, optimizer):
    buffer = optimizer.state[head.kernel]["momentum_buffer"]
    return (buffer.t() if head.sparse_grad else buffer).clone()  # (E, num_local)


def _optimizer_state_resharding(kernel, rank, out_dir, sparse_grad):
    """The one-process momentum in (1 -> 2), a lazy or dense step, all of it out (2 -> 1)."""
    embeddings, _, labels, yaw = problem(num_classes=kernel.shape[1])
    head = partial_fc(kernel, margin("arcface"), sample_rate=0.5, sparse_grad=sparse_grad)
    optimizer = SGD([head.kernel], lr=0.1, momentum=0.9, weight_decay=5e-4)
    case = {"empty": head.full_optimizer_state(optimizer)}
    head.load_full_optimizer_state(optimizer, torch.load(out_dir / "world1_momentum.pt", weights_only=True))
    case["momentum_in"] = _local_momentum(head, optimizer)
    torch.manual_seed(rank)
    pfc_step(head, _rows(embeddings, rank), _rows(labels, rank), _rows(yaw, rank))
    optimizer.step()
    case["momentum_local"] = _local_momentum(head, optimizer)
    case["momentum_out"] = head.full_optimizer_state(optimizer).get("momentum_buffer")
    case["sampled_index"] = head.sampled_index
    return case


def _worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank,
                            world_size=world_size)
    try:
        torch.save(_distributed_checks(rank, out_dir), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("partial_fc")
    torch.manual_seed(7)
    world1 = PartialFC(EMBEDDING, 11, margin("arcface"))
    torch.save(world1.full_state_dict(), out_dir / "world1.pt")
    torch.save(world1_momentum(), out_dir / "world1_momentum.pt")
    mp.spawn(_worker, args=(2, out_dir), nprocs=2, join=True)
    return world1, [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _joined(ranks, case, key, dim):
    return torch.cat([r[case][key] for r in ranks], dim=dim)


@pytest.mark.parametrize("name", EXACT_CASES)
def test_two_ranks_equal_single_process_full_softmax(two_ranks, name):
    _, ranks = two_ranks
    embeddings, kernel, labels, yaw = problem()
    want_loss, want_grad_x, want_grad_kernel = reference_grads(margin(name), embeddings, kernel, labels, yaw)
    assert [(r[name]["class_start"], r[name]["num_local"]) for r in ranks] == [(0, 6), (6, 5)]
    for r in ranks:
        torch.testing.assert_close(r[name]["loss"], want_loss, **TOL)
    torch.testing.assert_close(_joined(ranks, name, "grad_x", 0), want_grad_x, **TOL)
    torch.testing.assert_close(_joined(ranks, name, "grad_kernel", 1), want_grad_kernel, **TOL)


def test_two_ranks_scale_embedding_grads_for_ddp_averaging(two_ranks):
    _, ranks = two_ranks
    torch.testing.assert_close(_joined(ranks, "ddp", "grad_x", 0), 2 * _joined(ranks, "pgaml", "grad_x", 0))
    torch.testing.assert_close(_joined(ranks, "ddp", "grad_kernel", 1), _joined(ranks, "pgaml", "grad_kernel", 1))


def test_two_ranks_sampled_keep_positives(two_ranks):
    _, ranks = two_ranks
    _, _, labels, _ = problem(num_classes=40)
    assert ranks[0]["sampled"]["loss"] == ranks[1]["sampled"]["loss"]
    assert torch.isfinite(ranks[0]["sampled"]["loss"])
    for r in ranks:
        step = r["sampled"]
        start, index = step["class_start"], step["sampled_index"]
        local = labels[(labels >= start) & (labels < start + step["num_local"])] - start
        assert index.numel() == 10 and set(local.tolist()) <= set(index.tolist())
        unsampled = torch.ones(step["num_local"], dtype=torch.bool)
        unsampled[index] = False
        assert torch.all(step["grad_kernel"][:, unsampled] == 0)
        assert step["grad_kernel"][:, index].abs().sum() > 0
        assert step["sparse"] and not r["sampled_dense"]["sparse"]
        assert torch.equal(r["sampled_dense"]["sampled_index"], index)
        torch.testing.assert_close(step["grad_kernel"], r["sampled_dense"]["grad_kernel"], rtol=0, atol=0)


def test_two_ranks_full_state_dict_and_resharding(two_ranks):
    world1, ranks = two_ranks
    embeddings, kernel, labels, _ = problem()
    assert torch.equal(ranks[0]["full"], torch.cat([r["local_kernel"] for r in ranks], dim=1))
    assert ranks[1]["full"] is None
    # world size 1 -> 2: each rank holds its exact slice, and the sharded cosines are the one-process ones
    # (to float rounding: the matrix product blocks 6 + 5 columns differently from 11)
    assert torch.equal(torch.cat([r["kernel_in"] for r in ranks], dim=1), world1.kernel.detach())
    close = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(torch.cat([r["cosine_in"] for r in ranks], dim=1), world1.cosine(embeddings), **close)
    # world size 2 -> 1
    world1.load_full_state_dict({"kernel": ranks[0]["full"]})
    assert torch.equal(world1.kernel.detach(), ranks[0]["full"])
    torch.testing.assert_close(world1.cosine(embeddings), torch.cat([r["cosine_out"] for r in ranks], dim=1), **close)
    want = partial_fc(kernel, margin("arcface")).accuracy(embeddings, labels)
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] == want


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_two_ranks_optimizer_state_resharding(two_ranks, sparse_grad):
    _, ranks = two_ranks
    cases = [r[f"optimizer_sparse{sparse_grad}"] for r in ranks]
    assert cases[0]["empty"] == cases[1]["empty"] == {}  # no momentum yet
    momentum = world1_momentum()["momentum_buffer"]
    # world size 1 -> 2: each rank holds its slice
    assert torch.equal(torch.cat([c["momentum_in"] for c in cases], dim=1), momentum)
    # world size 2 -> 1, after a step: rank 0 gathers every slice
    after = torch.cat([c["momentum_local"] for c in cases], dim=1)
    assert not torch.equal(after, momentum)
    assert torch.equal(cases[0]["momentum_out"], after) and cases[1]["momentum_out"] is None
    if sparse_grad:  # the lazy step left the momentum of unsampled centres as it was
        for c in cases:
            unsampled = torch.ones(c["momentum_in"].shape[1], dtype=torch.bool)
            unsampled[c["sampled_index"]] = False
            assert torch.equal(c["momentum_local"][:, unsampled], c["momentum_in"][:, unsampled])
    # the checkpoint does not depend on the layout: resume it in the other one
    head = PartialFC(EMBEDDING, 40, margin("arcface"), sample_rate=0.5, sparse_grad=not sparse_grad)
    optimizer = SGD([head.kernel], lr=0.1, momentum=0.9)
    head.load_full_optimizer_state(optimizer, {"momentum_buffer": cases[0]["momentum_out"]})
    assert torch.equal(head.full_optimizer_state(optimizer)["momentum_buffer"], after)


def test_two_ranks_record_the_global_batchs_statistics(two_ranks):
    _, ranks = two_ranks
    embeddings, kernel, labels, _ = problem()
    assert ranks[0]["statistics"] == ranks[1]["statistics"]   # the same figures on every rank
    assert_statistics_close(ranks[0]["statistics"], reference_statistics(embeddings, kernel, labels))
