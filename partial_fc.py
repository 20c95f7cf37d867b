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

Gradients and the optimiser. Unsampled centres get an exact zero gradient. The gradient of `kernel` is
dense (a standard `torch.optim.SGD` on `kernel` works as is, momentum and weight decay included; as in
arcface_torch's PartialFC v2, momentum keeps moving centres that were not sampled this step). What
sampling saves is the per-step work and the batch-by-classes tensors (logits, softmax, their gradients,
the gathered centres), not the centres, their gradient or the optimiser state.

Layout. `kernel` has TreB1eN's shape `(embedding_size, num_local)`, stored class-major (a transposed view
of a `(num_local, embedding_size)` tensor) so that gathering the sampled centres reads whole rows.
`state_dict()` holds only this rank's slice; checkpoints use `full_state_dict()` /
`load_full_state_dict()`, which re-shard, so a run saved at world size N resumes at world size M.

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

    Fused so that neither a normalised copy of the centres nor the cosines are kept for backward, and
    so that the kernel gradient is written straight into a class-major buffer that matches `kernel`'s
    layout (autograd then adopts it without a copy). With c = x.w/|w|:
    d/dw = (g/|w|) x - w (g/|w|) (x.w)/|w|^2, summed over the batch.
    """

    @staticmethod
    def forward(ctx, x_hat, kernel, index):
        rows = kernel.t()  # (num_local, E); contiguous for the class-major layout
        centres = rows if index is None else rows.index_select(0, index)
        inv_norm = centres.norm(dim=1).clamp_min(NORM_EPS).reciprocal()
        cosine = x_hat @ centres.t()
        cosine.mul_(inv_norm).clamp_(-1.0, 1.0)
        ctx.save_for_backward(x_hat, centres, inv_norm, index)
        ctx.num_local = rows.shape[0]
        ctx.has_index = index is not None
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
            if ctx.has_index:
                sampled = grad_rows
                grad_rows = sampled.new_zeros((ctx.num_local, sampled.shape[1]))
                grad_rows.index_copy_(0, index, sampled)
            grad_kernel = grad_rows.t()
        return grad_x, grad_kernel, None


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
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: nn.Module, sample_rate: float = 1.0,
                 process_group=None, backbone_grads_averaged: bool = True):
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
        # arcface_torch's initialisation; class-major storage, exposed in TreB1eN's (E, C) orientation
        self.kernel = nn.Parameter(torch.empty(self.num_local, embedding_size).normal_(0, 0.01).t())
        self.sampled_index: torch.Tensor | None = None  # local columns used by the last step (None = all)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"classes=[{self.class_start}, {self.class_start + self.num_local}) on rank {self.rank}"
                f"/{self.world_size}, sample_rate={self.sample_rate}")

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
        cosine = _SampledCosine.apply(F.normalize(embeddings, dim=1), self.kernel, index)
        logits = self.margin(cosine, columns, **side)
        loss = _DistributedCrossEntropy.apply(logits, columns, self.group, self.world_size)
        regularizer = getattr(self.margin, "regularizer", None)
        if regularizer is not None and side.get("norms") is not None:
            # every rank computes the same term from the gathered norms; the gather's backward sums the
            # ranks' gradients, so each rank passes back 1/W of it
            loss = loss + _ScaleGrad.apply(regularizer(side["norms"]), 1.0 / self.world_size)
        return loss

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
        gather = lambda t: _gather(t, sizes, self.group, self.grad_scale)  # noqa: E731
        side = {name: gather(value) if _per_sample(value, count) else value for name, value in side.items()}
        return gather(embeddings), gather(labels), side

    # ----------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_local) cosines of these embeddings (not gathered) with all of this rank's centres."""
        return _SampledCosine.apply(F.normalize(embeddings, dim=1), self.kernel, None)

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
        mine = self.kernel.detach().t().contiguous()  # (num_local, E)
        if self.rank != 0:
            dist.send(mine, dst=dist.get_global_rank(self._group_or_world(), 0), group=self.group)
            return {}
        full_rows = torch.empty(self.num_classes, self.embedding_size, dtype=mine.dtype)
        full_rows[self.class_start:self.class_start + self.num_local].copy_(mine)
        for rank in range(1, self.world_size):
            start, end = shard_range(self.num_classes, rank, self.world_size)
            part = mine.new_empty((end - start, self.embedding_size))
            dist.recv(part, src=dist.get_global_rank(self._group_or_world(), rank), group=self.group)
            full_rows[start:end].copy_(part)
        return {"kernel": full_rows.t()}

    @torch.no_grad()
    def load_full_state_dict(self, state: dict) -> None:
        """Keep this rank's slice of a full `{"kernel": (embedding_size, num_classes)}` (any world size
        saved it). Load the checkpoint with `torch.load(..., mmap=True)` so only the slice is read."""
        full = state["kernel"]
        expected = (self.embedding_size, self.num_classes)
        if tuple(full.shape) != expected:
            raise ValueError(f"checkpoint kernel has shape {tuple(full.shape)}; this PartialFC needs {expected}")
        self.kernel.copy_(full[:, self.class_start:self.class_start + self.num_local])

    def _group_or_world(self):
        return self.group if self.group is not None else dist.group.WORLD


def _per_sample(value, count: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == count
