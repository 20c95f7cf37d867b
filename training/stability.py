"""Training stability: the backbone's gradient norm and its clipping (--clip_grad_norm), the step's figures that
expose a collapse, and the rule that warns of one.

A collapse (the loss falls a little, then sits near ln C plus the margin's cost while nothing is learnt) shows
in what `training.hooks.TrainLog` logs at every log step from that step's own forward pass: in-batch accuracy
near chance, the mean target angle back near 90 degrees, the embeddings' norm and mutual cosine, the centres'
mean mutual cosine (`partial_fc.PartialFC.forward_statistics`) and the backbone's gradient norm (here).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

# the remedies the collapse warning names (README, "Training that does not collapse")
REMEDIES = ("lower --lr or scale it to the batch with --lr_reference_batch, ramp the margin in with "
            "--margin_warmup_steps, use a smaller --scale (or --scale auto), clip with --clip_grad_norm")


def backbone_grad_norm(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                       parameters: Iterable[torch.nn.Parameter], max_norm: float = 0.0,
                       measure: bool = False) -> float | None:
    """Between backward and `scaler.step`: clip the gradient norm of `parameters` (the backbone's: the Partial FC
    centres are left out, their gradient may be sparse) to `max_norm` (0: no clipping); with `measure`, return
    the norm before clipping (otherwise None, and no host sync).

    Clipping unscales the gradients first (`scaler.unscale_`, once per step: `scaler.step` then does not unscale
    them again), so `max_norm` is in the true gradient's units under fp16 AMP too. Measuring alone leaves the
    gradients untouched and divides the scaled norm by the scale: logging never changes the update.
    """
    if not (max_norm or measure):
        return None
    with_grad = [p for p in parameters if p.grad is not None]
    if max_norm:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad]) if with_grad else torch.zeros(())
        if scaler.is_enabled():
            norm = norm / scaler.get_scale()
    return float(norm) if measure else None


@torch.no_grad()
def global_mean(values: torch.Tensor) -> float:
    """The mean of `values` over every rank's entries (collective under torch.distributed)."""
    total = torch.stack([values.detach().double().sum(), torch.tensor(float(values.numel()), dtype=torch.float64,
                                                                     device=values.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


COLLAPSE_WINDOW = 5      # log steps averaged at each end of the run so far
COLLAPSE_MIN_DROP = 0.01  # the loss must have fallen by 1% of its first window's mean


def near_chance(num_classes: int) -> float:
    """The in-batch accuracy below which a run has learnt (almost) nothing: twice chance (2 / C), and at least 2%,
    so that a few lucky hits in a batch of a many-class run do not count as learning."""
    return max(2.0 / max(num_classes, 1), 0.02)


def collapse_suspected(losses: Sequence[float], accuracies: Sequence[float], num_classes: int,
                       window: int = COLLAPSE_WINDOW, min_drop: float = COLLAPSE_MIN_DROP) -> bool:
    """Whether the run so far shows the collapse pattern: its loss has fallen while its in-batch accuracy stays
    near chance, i.e. it lowers the loss by some other means than telling the identities apart (shrinking the
    margin's cost, pulling all embeddings and centres together).

    `losses`: the mean training loss of each log interval, in order; `accuracies`: the in-batch top-1 accuracy
    of each log step's own forward pass; `num_classes`: the classes that accuracy chooses among (chance is
    1 / num_classes). Non-finite entries are left out. True when all of these hold:
    - at least 3 * `window` log steps: the first and the last windows are a window apart, so the noise of the
      first steps and an LR warm-up's slow start do not decide;
    - the mean loss of the last `window` log steps is below the first `window`'s by at least `min_drop` of the
      latter (relative: the loss's scale moves with s, the margin and C). Small on purpose: a run whose accuracy
      stays at chance gains nothing real from a lower loss, so the drop only has to stand out of the noise of
      a window's mean (the demo's collapse: 10.2 -> ~10.0, 2%);
    - the mean accuracy of the last `window` log steps is below `near_chance(num_classes)` (a mean over the
      window's batches, not each one: one lucky batch must not silence it, nor one unlucky batch raise it).
    A learning run fails the last test (its accuracy has left chance), a flat run the second. A run that has
    not yet begun to learn by its 3 * `window`-th log step can pass all three: the warning says so.
    """
    ends = _window_means(losses, accuracies, window)
    if ends is None:
        return False
    first, last, last_accuracy = ends
    return first - last >= min_drop * abs(first) and last_accuracy < near_chance(num_classes)


def collapse_warning(step: int, losses: Sequence[float], accuracies: Sequence[float], num_classes: int,
                     window: int = COLLAPSE_WINDOW) -> str:
    """The log line of a suspected collapse (`collapse_suspected`), with its figures and the remedies."""
    first, last, accuracy = _window_means(losses, accuracies, window)
    return (f"step {step}: the loss fell from {first:.3f} to {last:.3f} (means of {window} log steps) while the "
            f"in-batch training accuracy stays near chance ({accuracy:.3f}; chance {1 / num_classes:.4f}): the "
            f"training looks collapsed (or has not begun to learn). Remedies: {REMEDIES}")


def _window_means(losses, accuracies, window: int) -> tuple[float, float, float] | None:
    """(mean loss of the first `window` finite log steps, of the last `window`, mean accuracy of the last),
    None before there are 3 * `window` of them."""
    pairs = [(loss, acc) for loss, acc in zip(losses, accuracies) if math.isfinite(loss) and math.isfinite(acc)]
    if window < 1 or len(pairs) < 3 * window:
        return None
    mean = lambda values: sum(values) / window
    return (mean([loss for loss, _ in pairs[:window]]), mean([loss for loss, _ in pairs[-window:]]),
            mean([acc for _, acc in pairs[-window:]]))
