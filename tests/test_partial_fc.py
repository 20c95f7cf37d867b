"""Partial FC against a plain full-softmax reference, in one process and in two gloo processes."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from heads import build_margin, list_heads
from partial_fc import PartialFC, shard_range

EMBEDDING = 16
TOL = dict(rtol=1e-5, atol=1e-5)


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


def test_sampled_step_is_the_softmax_over_the_sampled_centres():
    embeddings, kernel, labels, yaw = problem(num_classes=40)
    module = partial_fc(kernel, margin("pgaml"), sample_rate=0.5)
    torch.manual_seed(0)
    loss, grad_x = pfc_step(module, embeddings, labels, yaw)
    index = module.sampled_index
    want_loss, want_grad_x, want_sub_grad = reference_grads(
        margin("pgaml"), embeddings, kernel[:, index], torch.searchsorted(index, labels), yaw)
    torch.testing.assert_close(loss, want_loss, **TOL)
    torch.testing.assert_close(grad_x, want_grad_x, **TOL)
    torch.testing.assert_close(module.kernel.grad[:, index], want_sub_grad, **TOL)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[index] = False
    assert torch.all(module.kernel.grad[:, unsampled] == 0)


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
    embeddings, kernel, labels, _ = problem()
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


def test_shard_ranges_cover_all_classes_evenly():
    for num_classes, world in [(11, 2), (1_000_000, 8), (7, 7), (10, 3)]:
        ranges = [shard_range(num_classes, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


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
    return {"loss": loss, "grad_x": grad_x, "grad_kernel": module.kernel.grad.clone(),
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

    embeddings, _, labels, _ = problem()
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


def test_two_ranks_full_state_dict_and_resharding(two_ranks):
    world1, ranks = two_ranks
    embeddings, kernel, labels, _ = problem()
    assert torch.equal(ranks[0]["full"], torch.cat([r["local_kernel"] for r in ranks], dim=1))
    assert ranks[1]["full"] is None
    # world size 1 -> 2: each rank holds its exact slice, and the sharded cosines are the one-process ones
    # (to float rounding: the matrix product blocks 6 + 5 columns differently from 11)
    assert torch.equal(torch.cat([r["kernel_in"] for r in ranks], dim=1), world1.kernel.detach())
    close = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["cosine_in"] for r in ranks], dim=1), world1.cosine(embeddings), **close)
    # world size 2 -> 1
    world1.load_full_state_dict({"kernel": ranks[0]["full"]})
    assert torch.equal(world1.kernel.detach(), ranks[0]["full"])
    torch.testing.assert_close(world1.cosine(embeddings), torch.cat([r["cosine_out"] for r in ranks], dim=1), **close)
    want = partial_fc(kernel, margin("arcface")).accuracy(embeddings, labels)
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] == want
