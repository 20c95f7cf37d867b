"""Partial FC: a classifier whose class centres are sharded over ranks and sampled per step.

For millions of identities the centres (`embedding_size x num_classes`) and the logits
(`global batch x num_classes`) do not fit, or do not pay, on one device. `PartialFC`:

- shards the centres: rank r of W owns the contiguous classes `[class_start, class_start + num_local)`,
  as even as possible (the first `num_classes % W` ranks own one more);
- all-gathers the embeddings, labels and side information (yaw, height, norms) of the whole batch, with
  an all-gather whose backward sums each sample's gradient from every rank back to its owner;
- per step uses the centres of the classes present in the global batch that this rank owns (the
  positives, always) plus random other local centres, `sample_rate * num_local` in all;
- applies the margin (`heads.build_margin`) to the local cosines, with the labels remapped to the sampled
  columns and -1 on rows whose class lives elsewhere;
- computes the softmax cross-entropy across ranks without any rank holding all classes' logits: the row
  max and the sum of exponentials are all-reduced, the target logit comes from the one rank that owns it.

`sample_rate=1.0` is model parallelism without sampling; with one process (no process group) it is a
plain cosine classifier + margin + `CrossEntropyLoss`.

Gradients and the optimiser. Unsampled centres get no gradient. With `sparse_grad` (the default when
sample_rate < 1) the gradient of `kernel` is a sparse COO tensor holding only the sampled centres
(arcface_torch's PartialFC v1 idea), and `partial_fc.SGD`, a drop-in `torch.optim.SGD`, updates them
lazily: weight decay and momentum act on the sampled rows only, the others keep their value and their
momentum (unlike SGD on a dense gradient with zeros, or arcface_torch's v2, where momentum and weight
decay move every centre at every step). Dense parameters (the backbone) get torch's own SGD update, so
one optimiser serves the whole model; `torch.amp.GradScaler` unscales the sparse gradient as it is.
`torch.nn.utils.clip_grad_norm_` does not take sparse gradients: leave `kernel` out of clipping. At
sample_rate 1.0 the gradient is dense, as before, and any optimiser works.

What it buys (`python -m perf.partial_fc`: 1M classes, 2 gloo processes, batch 128 per rank, embedding 512, CPU,
SGD momentum 0.9 + weight decay inside the timed step): sample_rate 0.1 against 1.0 takes 1.2 s a step
instead of 12.3 s (10x). Peak RSS per process is 2.5 GiB against 4.1 GiB, only 1.65x less: the centres
(0.95 GiB per rank) and their momentum buffer (0.95 GiB) are stored at every rate. What sampling can
shrink, the memory each step needs above them (kernel gradient, logits, softmax, their gradients, the
gathered centres, SGD temporaries), falls from 1.95 GiB to 0.32 GiB (6x; 1.94 GiB at 0.1 with a dense
gradient). The issue's 5x on total peak memory is out of reach by construction while the centres and
their momentum live in memory; fp16 centres or dropping momentum would be the next levers.

Layout. `kernel` holds this rank's centres class-major, so that gathering the sampled centres reads
whole rows: with a dense gradient it has TreB1eN's shape `(embedding_size, num_local)` (a transposed view
of `(num_local, embedding_size)` rows); with `sparse_grad` it is those rows, `(num_local, embedding_size)`,
because a row-sparse COO gradient needs the classes first. `state_dict()` holds only this rank's slice,
as `(embedding_size, num_local)` either way; checkpoints use `full_state_dict()` /
`load_full_state_dict()` and, for the kernel's momentum, `full_optimizer_state()` /
`load_full_optimizer_state()`, which re-shard, so a run saved at world size N resumes at world size M
(with either layout). `optimizer_state_key()` names the kernel's (sharded) entry in the optimiser's state
dict, which the checkpoint leaves out.

Diagnostics. With `record_statistics = True` (the trainer sets it on its log steps only, so ordinary steps pay
nothing) `forward` also leaves detached figures of that very forward pass, before the margin and before any
update, in `statistics` (`forward_statistics` says which); they cover the global batch and every class, so
they are the same on every rank.

DDP. Keep `PartialFC` out of `DistributedDataParallel` (its parameters differ per rank by design). DDP
averages the backbone's gradients over ranks; with `backbone_grads_averaged=True` (default) the
embedding gradient is multiplied by the world size so that this average is the gradient of the global
mean loss that `forward` returns. Pass False when the backbone's gradients are summed instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-12  # as F.normalize


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes owned by `rank`: contiguous, sizes differing by at most one."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _rank_and_world(group) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


# ----------------------------------------------------------------------------------------- collectives

def _gather_sizes(count: int, device, group, world_size: int) -> list[int]:
    mine = torch.tensor([count], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _all_gather_rows(tensor: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0; batches may differ in size (padded for the wire)."""
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, padding])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _AllGatherRows(torch.autograd.Function):
    """All-gather along dim 0. Every rank's loss depends on every sample, so the backward sums the
    gradients of all ranks (all-reduce) and hands each rank the rows of its own samples."""

    @staticmethod
    def forward(ctx, tensor, sizes, group, grad_scale):
        ctx.sizes, ctx.group, ctx.grad_scale = sizes, group, grad_scale
        ctx.rank = dist.get_rank(group)
        return _all_gather_rows(tensor, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce writes in place
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        mine = grad[start:start + ctx.sizes[ctx.rank]]
        if ctx.grad_scale != 1:
            mine = mine * ctx.grad_scale
        return mine, None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _gather(tensor, sizes, group, grad_scale):
    if tensor.requires_grad:
        return _AllGatherRows.apply(tensor, sizes, group, grad_scale)
    return _all_gather_rows(tensor, sizes, group)


# ------------------------------------------------------------------------------------ autograd pieces

def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a * b).sum(1) without a full-size temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _SampledCosine(torch.autograd.Function):
    """cos(x_hat_b, w_c) for the centres `index` (None = all) of `kernel`.

    `kernel` is stored class-major: TreB1eN's (E, num_local) as a transposed view of (num_local, E), or
    with `row_sparse` the (num_local, E) rows themselves. Fused so that neither a normalised copy of the
    centres nor the cosines are kept for backward. The kernel gradient is either dense, written straight
    into a class-major buffer that matches `kernel`'s layout (autograd then adopts it without a copy), or
    with `row_sparse` a coalesced sparse COO tensor holding only the sampled rows. With c = x.w/|w|:
    d/dw = (g/|w|) x - w (g/|w|) (x.w)/|w|^2, summed over the batch.
    """

    @staticmethod
    def forward(ctx, x_hat, kernel, index, row_sparse):
        rows = kernel if row_sparse else kernel.t()  # (num_local, E), contiguous
        centres = rows if index is None else rows.index_select(0, index)
        inv_norm = centres.norm(dim=1).clamp_min(NORM_EPS).reciprocal()
        cosine = x_hat @ centres.t()
        cosine.mul_(inv_norm).clamp_(-1.0, 1.0)
        ctx.save_for_backward(x_hat, centres, inv_norm, index)
        ctx.num_local = rows.shape[0]
        ctx.has_index, ctx.row_sparse = index is not None, row_sparse
        return cosine

    @staticmethod
    def backward(ctx, grad_cosine):
        x_hat, centres, inv_norm, index = ctx.saved_tensors
        scaled = grad_cosine * inv_norm
        grad_x = scaled @ centres if ctx.needs_input_grad[0] else None
        grad_kernel = None
        if ctx.needs_input_grad[1]:
            grad_rows = scaled.t() @ x_hat  # (S, E)
            along = _row_dots(grad_rows, centres) * inv_norm.square()
            grad_rows.addcmul_(centres, along.unsqueeze(1), value=-1.0)
            if ctx.row_sparse:
                if not ctx.has_index:
                    index = torch.arange(ctx.num_local, device=grad_rows.device)
                # sample() sorts the indices and they are unique: coalesced by construction
                shape = (ctx.num_local, grad_rows.shape[1])
                grad_kernel = torch.sparse_coo_tensor(index.unsqueeze(0), grad_rows, shape, is_coalesced=True,
                                                      check_invariants=False)
            else:
                if ctx.has_index:
                    sampled = grad_rows
                    grad_rows = sampled.new_zeros((ctx.num_local, sampled.shape[1]))
                    grad_rows.index_copy_(0, index, sampled)
                grad_kernel = grad_rows.t()
        return grad_x, grad_kernel, None, None


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of logits split by columns over ranks.

    `labels[b]` is the column of row b's target on this rank, -1 where another rank owns it.
    The softmax denominator is all-reduced (max, then sum of exp); the target logit is all-reduced
    from its single owner. Backward: (softmax - one_hot) / batch on the local columns.
    """

    @staticmethod
    def forward(ctx, logits, labels, group, world_size):
        batch = logits.shape[0]
        row_max = logits.detach().amax(dim=1, keepdim=True)
        if world_size > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        probs = (logits.detach() - row_max).exp_()
        sum_exp = probs.sum(dim=1, keepdim=True)
        owned = (labels >= 0).nonzero().view(-1)
        target = logits.new_zeros((2, batch))  # [target logit, number of owners]
        target[0, owned] = logits.detach()[owned, labels[owned]]
        target[1, owned] = 1.0
        if world_size > 1:
            dist.all_reduce(sum_exp, group=group)
            dist.all_reduce(target, group=group)
        if not torch.all(target[1] == 1):
            raise RuntimeError("PartialFC: a sample's target class is owned by no rank or by several")
        probs.div_(sum_exp)
        ctx.save_for_backward(probs, labels)
        ctx.used = False
        per_sample = row_max.squeeze(1) + sum_exp.squeeze(1).log() - target[0]
        return per_sample.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.used:  # the softmax buffer becomes the gradient in place
            raise RuntimeError("PartialFC's cross-entropy does not support backward twice (retain_graph)")
        ctx.used = True
        probs, labels = ctx.saved_tensors
        owned = (labels >= 0).nonzero().view(-1)
        probs[owned, labels[owned]] -= 1.0
        probs.mul_(grad_loss / probs.shape[0])
        return probs, None, None, None


# ------------------------------------------------------------------------------------------ the module

class PartialFC(nn.Module):
    """Sharded, sampled cosine classifier + margin + softmax cross-entropy; `forward` returns the loss.

    margin: `heads.build_margin(...)`, called as `margin(cosine, labels, **side)` -> scaled logits; its
        optional `regularizer(norms)` is added to the loss (norms gathered from every rank).
    sample_rate: fraction of this rank's centres used per step (positives always; more if the batch
        holds more positives than that).
    process_group: the ranks that share the classes (default: the whole world, or one process when
        torch.distributed is not initialised).
    sparse_grad: the gradient of `kernel` is a sparse COO tensor holding only the sampled centres (update it
        with `partial_fc.SGD`); default: when sample_rate < 1. Otherwise dense, zero on unsampled centres.

    `kernel`, this rank's centres, is stored class-major. Dense gradient: TreB1eN's `(embedding_size,
    num_local)`, a transposed view of `(num_local, embedding_size)` rows. Sparse gradient: the
    `(num_local, embedding_size)` rows themselves, because a row-sparse COO tensor must have the classes on
    its first dimension (autograd wants a gradient of the parameter's shape). `state_dict()`,
    `load_state_dict()` and the `full_*` methods use `(embedding_size, ...)` either way, so checkpoints do
    not depend on the mode.
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: nn.Module, sample_rate: float = 1.0,
                 process_group=None, backbone_grads_averaged: bool = True, sparse_grad: bool | None = None):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must be in (0, 1]")
        self.group = process_group
        self.rank, self.world_size = _rank_and_world(process_group)
        if num_classes < self.world_size:
            raise ValueError(f"num_classes={num_classes} is fewer than the {self.world_size} ranks sharing them")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.class_start, class_end = shard_range(num_classes, self.rank, self.world_size)
        self.num_local = class_end - self.class_start
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self.grad_scale = self.world_size if backbone_grads_averaged else 1
        self.margin = margin
        self.sparse_grad = sample_rate < 1.0 if sparse_grad is None else bool(sparse_grad)
        rows = torch.empty(self.num_local, embedding_size).normal_(0, 0.01)  # arcface_torch's initialisation
        self.kernel = nn.Parameter(rows if self.sparse_grad else rows.t())
        if self.sparse_grad:  # the state dict keeps TreB1eN's (E, C) orientation
            self.register_state_dict_post_hook(_kernel_to_state_dict)
            self.register_load_state_dict_pre_hook(_kernel_from_state_dict)
        self.sampled_index: torch.Tensor | None = None  # local columns used by the last step (None = all)
        self.record_statistics = False                   # forward fills `statistics` (collective when set)
        self.statistics: dict[str, float] = {}

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"classes=[{self.class_start}, {self.class_start + self.num_local}) on rank {self.rank}"
                f"/{self.world_size}, sample_rate={self.sample_rate}, sparse_grad={self.sparse_grad}")

    # ---------------------------------------------------------------------------------------- training

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, **side) -> torch.Tensor:
        """Mean loss over the global batch (the same value on every rank).

        embeddings: (B, E) this rank's batch (normalised here, so unit or raw features alike).
        labels: (B,) global class ids.
        side: per-sample tensors (yaw=, height=, norms=: the features' norms before normalisation, as the
        backbones return them) gathered like the embeddings, with gradients; other values pass as they are.
        With `norms`, the margin's `regularizer(norms)` (MagFace) is part of the returned loss: the
        trainer must not add it again.
        """
        labels = labels.reshape(-1).long()
        embeddings, labels, side = self._gather_batch(embeddings, labels, side)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}); got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, -1)
        index, columns = self.sample(local)
        x_hat = F.normalize(embeddings, dim=1)
        cosine = _SampledCosine.apply(x_hat, self.kernel, index, self.sparse_grad)
        if self.record_statistics:
            self.statistics = self.forward_statistics(x_hat, cosine, columns)
        logits = self.margin(cosine, columns, **side)
        loss = _DistributedCrossEntropy.apply(logits, columns, self.group, self.world_size)
        regularizer = getattr(self.margin, "regularizer", None)
        if regularizer is not None and side.get("norms") is not None:
            # every rank computes the same term from the gathered norms; the gather's backward sums the
            # ranks' gradients, so each rank passes back 1/W of it
            loss = loss + _ScaleGrad.apply(regularizer(side["norms"]), 1.0 / self.world_size)
        return loss

    @torch.no_grad()
    def forward_statistics(self, x_hat: torch.Tensor, cosine: torch.Tensor, columns: torch.Tensor) -> dict[str, float]:
        """What exposes a collapse, from one forward pass (collective: every rank calls it, with its own columns):

        accuracy: top-1 over the columns this step used: the target's cosine above every other used centre's
            (with sample_rate 1 all classes; with sampling the positives and the sampled negatives);
        target_cos, target_angle_deg: mean cosine of each sample to its own centre, and the mean angle in degrees
            (before the margin);
        max_other_cos: mean over samples of the highest cosine to another used centre;
        batch_pair_cos: mean cosine between distinct samples of the global batch (unit embeddings);
        centre_pair_cos: mean cosine between distinct class centres over all classes (`centre_pair_cosine`).
        """
        cosine = cosine.detach().double()
        owned = columns >= 0
        at_target = columns.clamp_min(0).unsqueeze(1)
        target_here = cosine.gather(1, at_target).squeeze(1)
        target = torch.where(owned, target_here, 0.0)
        # the target's own column out of the max; rows whose target lives elsewhere keep every column
        others = cosine.scatter(1, at_target, torch.where(owned, -torch.inf, target_here).unsqueeze(1))
        max_other = others.amax(dim=1)
        if self.world_size > 1:
            dist.all_reduce(target, group=self.group)   # one owner per sample, zeros elsewhere
            dist.all_reduce(max_other, op=dist.ReduceOp.MAX, group=self.group)
        rows = x_hat.shape[0]
        pair_sum = x_hat.detach().double().sum(dim=0)
        pair_cos = (pair_sum.square().sum() - x_hat.detach().double().square().sum()) / max(rows * (rows - 1), 1)
        mean = lambda t: float(t.mean()) if rows else float("nan")
        return {"accuracy": mean((target > max_other).double()), "target_cos": mean(target),
                "target_angle_deg": mean(torch.rad2deg(torch.acos(target.clamp(-1.0, 1.0)))),
                "max_other_cos": mean(max_other) if torch.isfinite(max_other).all() else float("nan"),
                "batch_pair_cos": float(pair_cos) if rows > 1 else float("nan"),
                "centre_pair_cos": self.centre_pair_cosine()}

    @torch.no_grad()
    def centre_pair_cosine(self, chunk: int = 65536) -> float:
        """Mean cosine between distinct class centres, over all classes and ranks: with the unit centres w_c,
        (|sum_c w_c|^2 - sum_c |w_c|^2) / (C (C - 1)). Exact, O(C E), in float64, read in chunks of rows (no
        copy of the centres); collective (one all-reduce of E + 1 numbers)."""
        rows = self._class_major(self.kernel.detach())
        total = torch.zeros(rows.shape[1] + 1, dtype=torch.float64, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            unit = F.normalize(rows[start:start + chunk].double(), dim=1)
            total[:-1] += unit.sum(dim=0)
            total[-1] += unit.square().sum()
        if self.world_size > 1:
            dist.all_reduce(total, group=self.group)
        pairs = self.num_classes * (self.num_classes - 1)
        return float((total[:-1].square().sum() - total[-1]) / pairs) if pairs else float("nan")

    def sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Choose this step's centres; returns (sorted local indices or None for all, labels as columns).

        local_labels: (B_total,) class index within this shard, -1 where another rank owns it.
        Random choice from torch's default generator, so `torch.manual_seed` makes it repeatable.
        """
        if self.num_sample >= self.num_local:
            self.sampled_index = None
            return None, local_labels
        with torch.no_grad():
            positives = torch.unique(local_labels[local_labels >= 0])
            if positives.numel() >= self.num_sample:
                index = positives
            else:
                score = torch.rand(self.num_local, device=local_labels.device)
                score[positives] = 2.0  # above any rand(): the positives are always kept
                index = score.topk(self.num_sample, sorted=False).indices.sort().values
            columns = torch.where(local_labels >= 0,
                                  torch.searchsorted(index, local_labels.clamp_min(0)), -1)
        self.sampled_index = index
        return index, columns

    def _gather_batch(self, embeddings, labels, side):
        if self.world_size == 1:
            return embeddings, labels, side
        count = embeddings.shape[0]
        sizes = _gather_sizes(count, embeddings.device, self.group, self.world_size)
        gather = lambda t: _gather(t, sizes, self.group, self.grad_scale)
        side = {name: gather(value) if _per_sample(value, count) else value for name, value in side.items()}
        return gather(embeddings), gather(labels), side

    # ----------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_local) cosines of these embeddings (not gathered) with all of this rank's centres."""
        return _SampledCosine.apply(F.normalize(embeddings, dim=1), self.kernel, None, self.sparse_grad)

    @torch.no_grad()
    def accuracy(self, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the nearest centre over all classes and the global batch (collective)."""
        embeddings, labels, _ = self._gather_batch(embeddings, labels.reshape(-1).long(), {})
        best, column = self.cosine(embeddings).max(dim=1)
        # float64 holds class ids exactly (< 2**53); one gather carries both score and id
        local_best = torch.stack([best.double(), (column + self.class_start).double()])
        if self.world_size > 1:
            parts = [torch.empty_like(local_best) for _ in range(self.world_size)]
            dist.all_gather(parts, local_best, group=self.group)
            stacked = torch.stack(parts)  # (W, 2, B)
            winner = stacked[:, 0].argmax(dim=0)
            predicted = stacked[:, 1].gather(0, winner.unsqueeze(0)).squeeze(0)
        else:
            predicted = local_best[1]
        return float((predicted.long() == labels).double().mean()) if labels.numel() else 0.0

    # ----------------------------------------------------------------------------------- checkpoints

    @torch.no_grad()
    def full_state_dict(self) -> dict:
        """All centres, `{"kernel": (embedding_size, num_classes)}` on the CPU, on rank 0 of the group.

        Collective: every rank must call it. Other ranks send their slice and get `{}`. The slices travel
        one at a time, so rank 0 needs room for the full kernel on the CPU but only one slice on its device.
        """
        full_rows = self._gather_rows(self._class_major(self.kernel.detach()))
        return {} if full_rows is None else {"kernel": full_rows.t()}

    @torch.no_grad()
    def load_full_state_dict(self, state: dict) -> None:
        """Keep this rank's slice of a full `{"kernel": (embedding_size, num_classes)}` (any world size
        saved it). Load the checkpoint with `torch.load(..., mmap=True)` so only the slice is read."""
        self._class_major(self.kernel).copy_(self._local_rows(state["kernel"], "kernel"))

    def optimizer_state_key(self, optimizer: torch.optim.Optimizer) -> int | None:
        """The key of `kernel`'s entry in `optimizer.state_dict()["state"]`: its index among the optimizer's
        parameters, counted over the param groups in order; None when the optimizer does not hold it.

        That entry is this rank's shard only: a checkpoint drops it
        (`opt_state["state"].pop(head.optimizer_state_key(optimizer), None)`) and stores
        `full_optimizer_state(optimizer)` instead.
        """
        params = (p for group in optimizer.param_groups for p in group["params"])
        return next((key for key, p in enumerate(params) if p is self.kernel), None)

    @torch.no_grad()
    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """`kernel`'s SGD momentum over all classes, `{"momentum_buffer": (embedding_size, num_classes)}` on
        the CPU, on rank 0 of the group; `{}` on the other ranks, and everywhere before the optimizer has any
        momentum (no step yet, or momentum=0). Collective, like `full_state_dict`."""
        buffer = optimizer.state.get(self.kernel, {}).get("momentum_buffer")
        has_buffer = buffer is not None
        if self.world_size > 1:  # every rank must take part in the gather, or none
            flag = torch.tensor([float(has_buffer)], device=self.kernel.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            has_buffer = bool(flag.item())
        if not has_buffer:
            return {}
        mine = self._class_major(buffer) if buffer is not None else torch.zeros_like(self._class_major(self.kernel))
        full_rows = self._gather_rows(mine)
        return {} if full_rows is None else {"momentum_buffer": full_rows.t()}

    @torch.no_grad()
    def load_full_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Keep this rank's slice of `full_optimizer_state`'s momentum (any world size saved it) as `kernel`'s
        momentum buffer in `optimizer` (after `optimizer.load_state_dict`); `{}` leaves the optimizer as is."""
        if not state:
            return
        if self.optimizer_state_key(optimizer) is None:
            raise ValueError("this optimizer does not hold PartialFC.kernel")
        rows = self._local_rows(state["momentum_buffer"], "momentum_buffer")
        rows = rows.to(device=self.kernel.device, dtype=self.kernel.dtype).clone(memory_format=torch.contiguous_format)
        optimizer.state[self.kernel]["momentum_buffer"] = self._class_major(rows)  # kernel's layout again

    def _class_major(self, tensor: torch.Tensor) -> torch.Tensor:
        """A kernel-shaped tensor as (num_local, E) rows, and back: the transpose for the dense layout
        (its own inverse), nothing for the sparse one."""
        return tensor if self.sparse_grad else tensor.t()

    def _gather_rows(self, mine: torch.Tensor) -> torch.Tensor | None:
        """Every rank's (num_local, E) `mine` as one (num_classes, E) CPU tensor on rank 0; None elsewhere."""
        mine = mine.contiguous()
        if self.rank != 0:
            dist.send(mine, dst=dist.get_global_rank(self._group_or_world(), 0), group=self.group)
            return None
        full_rows = torch.empty(self.num_classes, mine.shape[1], dtype=mine.dtype)
        full_rows[self.class_start:self.class_start + self.num_local].copy_(mine)
        for rank in range(1, self.world_size):
            start, end = shard_range(self.num_classes, rank, self.world_size)
            part = mine.new_empty((end - start, mine.shape[1]))
            dist.recv(part, src=dist.get_global_rank(self._group_or_world(), rank), group=self.group)
            full_rows[start:end].copy_(part)
        return full_rows

    def _local_rows(self, full: torch.Tensor, name: str) -> torch.Tensor:
        """This rank's (num_local, E) rows of a full (E, num_classes) checkpoint tensor (a view)."""
        expected = (self.embedding_size, self.num_classes)
        if tuple(full.shape) != expected:
            raise ValueError(f"checkpoint {name} has shape {tuple(full.shape)}; this PartialFC needs {expected}")
        return full[:, self.class_start:self.class_start + self.num_local].t()

    def _group_or_world(self):
        return self.group if self.group is not None else dist.group.WORLD


def _kernel_to_state_dict(module, state_dict, prefix, local_metadata) -> None:
    state_dict[prefix + "kernel"] = state_dict[prefix + "kernel"].t()


def _kernel_from_state_dict(module, state_dict, prefix, *args) -> None:
    if prefix + "kernel" in state_dict:
        state_dict[prefix + "kernel"] = state_dict[prefix + "kernel"].t()


def _per_sample(value, count: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == count


# --------------------------------------------------------------------------------------- the optimiser

class SGD(torch.optim.SGD):
    """`torch.optim.SGD` that also takes row-sparse gradients (PartialFC's `kernel` with sparse_grad,
    `nn.Embedding(sparse=True)`) and updates them lazily.

    Parameters with dense gradients: exactly torch.optim.SGD (the parent class updates them). A parameter
    whose gradient is a sparse COO tensor with one sparse dimension: only the rows it holds change, each as
    torch.optim.SGD would change it (weight decay, momentum, dampening, nesterov, maximize); the other rows
    keep their value and their momentum. The momentum buffer is dense, the parameter's shape, in
    `state[p]["momentum_buffer"]` as torch keeps it, so `state_dict()` / `load_state_dict()`, param groups
    and `torch.optim.lr_scheduler` work unchanged; `torch.amp.GradScaler` unscales sparse gradients itself.
    The step that creates the buffer starts the touched rows from their gradient, as torch does; a row first
    touched later starts from zero momentum (the same thing unless dampening != 0).

    `fused=True` runs the dense parameters through torch's fused kernel; the sparse rows are updated lazily
    as above either way. The fused kernel would also take the GradScaler's scale and skip-flag itself, but
    the lazy rows would never see them, so the scaler is told to unscale every gradient (sparse included)
    and skip the whole step on inf/NaN, as it does for an unfused optimiser.
    """

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._step_supports_amp_scaling = False

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads as torch does, but keeps this optimiser's own `fused` and `foreach`: they say how the step
        runs on this device, not what the run learned (a run resumed on a GPU from a CPU checkpoint is
        fused there)."""
        implementation = [{key: group[key] for key in ("fused", "foreach")} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, kept in zip(self.param_groups, implementation):
            group.update(kept)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [(group, p) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None  # the parent skips parameters without a gradient
        # torch's fused kernel takes a group's momentum buffers all or none: a parameter whose first gradient comes
        # after the others' (a backbone unfrozen after --freeze_backbone_epochs) makes it fail, so that one step of
        # such a group runs unfused, exactly as torch's default would run it
        unfused = [group for group in self.param_groups if group["fused"] and self._buffers_half_made(group)]
        for group in unfused:
            group["fused"] = False
        try:
            _dense_sgd_step(self)
        finally:
            for group in unfused:
                group["fused"] = True
            for (_, p), grad in zip(sparse, grads):
                p.grad = grad
        with torch.no_grad():
            for group, p in sparse:
                self._lazy_update(p, group)
        return loss

    def _buffers_half_made(self, group: dict) -> bool:
        if group["momentum"] == 0:
            return False
        made = {self.state[p].get("momentum_buffer") is not None for p in group["params"] if p.grad is not None}
        return len(made) == 2

    def _lazy_update(self, param: torch.Tensor, group: dict) -> None:
        if group["differentiable"]:
            raise RuntimeError("partial_fc.SGD: differentiable does not support sparse gradients")
        rows, update = _sparse_rows(param.grad)
        if group["maximize"]:
            update = -update
        if group["weight_decay"] != 0:  # written over the gathered rows: one (rows, ...) temporary
            gathered = param.index_select(0, rows)
            update = torch.add(update, gathered, alpha=float(group["weight_decay"]), out=gathered)
        momentum = group["momentum"]
        if momentum != 0:
            state = self.state[param]
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                row_buffer = update  # torch starts from the gradient; index_copy_ below copies it
            else:
                row_buffer = buffer.index_select(0, rows).mul_(momentum).add_(update, alpha=1 - group["dampening"])
            buffer.index_copy_(0, rows, row_buffer)
            update = update.add(row_buffer, alpha=momentum) if group["nesterov"] else row_buffer
        param.index_add_(0, rows, update, alpha=-float(group["lr"]))


def _sparse_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, rows) of a row-sparse gradient, each row once. Autograd drops the coalesced flag that
    `_SampledCosine` sets, so check the indices (cheap) before paying for `coalesce()` (a sort and a copy)."""
    if grad.sparse_dim() != 1:
        raise RuntimeError(f"partial_fc.SGD: a sparse gradient must be row-sparse (one sparse dimension), "
                           f"got {grad.sparse_dim()}")
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
    return grad._indices()[0], grad._values()


def _dense_sgd_step(optimizer: SGD) -> None:
    step = torch.optim.SGD.step
    # once a plain torch.optim.SGD exists, torch has wrapped its step to run the optimiser's step hooks,
    # which our own (wrapped alike) step has run already
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    step(optimizer)
