"""training/stability.py: gradient clipping against a hand-computed SGD step (also under an fp16 gradient scaler),
the collapse rule on synthetic curves, and the warning the log hook gives once."""
from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from training.hooks import TrainLog
from training.stability import REMEDIES, backbone_grad_norm, collapse_suspected, global_mean, near_chance

LR = 0.1
INPUT = torch.tensor([[1.0, 2.0, -2.0, 0.5], [0.5, -1.0, 3.0, 1.5]])


def tiny_model():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.arange(12.0).reshape(3, 4) / 10)
    return model


def analytic_grad() -> torch.Tensor:
    """d/dW of sum(W x) over the batch: every row of W gets the sum of the inputs."""
    return INPUT.sum(dim=0).expand(3, 4)


def one_step(max_norm: float, scaler: torch.amp.GradScaler, measure: bool = True):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = model(INPUT).sum()
    scaler.scale(loss).backward()
    norm = backbone_grad_norm(scaler, optimizer, list(model.parameters()), max_norm, measure=measure)
    scaler.step(optimizer)
    scaler.update()
    return model.weight.detach(), norm


def hand_step(max_norm: float) -> torch.Tensor:
    grad = analytic_grad()
    norm = float(grad.norm())
    factor = min(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0   # torch's clip_grad_norm_ rule
    return tiny_model().weight.detach() - LR * factor * grad


def fp16_scaler(enabled: bool = True) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=enabled)


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1000.0])
def test_clipped_update_equals_a_hand_computed_clipped_sgd_step(max_norm, amp):
    weight, norm = one_step(max_norm, fp16_scaler(amp))
    # under the fp16 scaler this also shows the gradients were unscaled exactly once before the clip: clipping the
    # scaled gradients would move W 1024x less, a second unscale_ raises, none would move it 1024x more
    torch.testing.assert_close(weight, hand_step(max_norm), rtol=1e-6, atol=1e-6)
    # the norm before clipping, in the true gradient's units whatever the loss scale
    assert norm == pytest.approx(float(analytic_grad().norm()), rel=1e-6)


def test_clipping_before_unscaling_would_be_caught():
    """The negative control of the test above: clip the scaled gradients (the classic fp16 mistake)."""
    model = tiny_model()
    optimizer, scaler = torch.optim.SGD(model.parameters(), lr=LR), fp16_scaler()
    scaler.scale(model(INPUT).sum()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    assert not torch.allclose(model.weight.detach(), hand_step(1.0), rtol=1e-3, atol=1e-4)


def test_clipping_off_and_not_measuring_leaves_the_step_alone():
    weight, norm = one_step(0.0, fp16_scaler(), measure=False)
    assert norm is None
    torch.testing.assert_close(weight, hand_step(0.0), rtol=1e-6, atol=1e-6)


def test_clipping_leaves_out_the_parameters_not_given():
    model, centres = tiny_model(), nn.Parameter(torch.ones(3, 4))
    optimizer = torch.optim.SGD([*model.parameters(), centres], lr=LR)
    (model(INPUT).sum() + 100 * centres.sum()).backward()
    backbone_grad_norm(torch.amp.GradScaler("cpu", enabled=False), optimizer, list(model.parameters()), 1.0)
    torch.testing.assert_close(centres.grad, torch.full((3, 4), 100.0))
    assert float(model.weight.grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_global_mean_in_one_process():
    assert global_mean(torch.tensor([1.0, 2.0, 6.0])) == pytest.approx(3.0)
    assert math.isnan(global_mean(torch.empty(0)))


# ------------------------------------------------------------------------------------------- collapse rule

C = 200
CHANCE = 1 / C


def collapse_curve(steps=30):
    """The demo's collapse: loss 10.2 falls to ~9.95 and sits there; accuracy at chance throughout."""
    losses = [10.2 - 0.25 * min(1.0, i / 8) + 0.02 * math.sin(i) for i in range(steps)]
    accuracies = [CHANCE * (i % 3) for i in range(steps)]   # 0, 1/200, 2/200: a lucky hit now and then
    return losses, accuracies


def learning_curve(steps=30):
    losses = [10.2 - 5.0 * i / steps for i in range(steps)]
    accuracies = [min(0.9, 0.03 * i) for i in range(steps)]
    return losses, accuracies


def flat_curve(steps=30):
    return [10.2 + 0.05 * math.sin(i) for i in range(steps)], [CHANCE] * steps


def test_the_collapse_curve_falls_by_under_three_percent():
    losses, _ = collapse_curve()
    assert 0.01 < (sum(losses[:5]) - sum(losses[-5:])) / sum(losses[:5]) < 0.03


def test_the_rule_fires_on_a_collapse_and_not_before_three_windows():
    losses, accuracies = collapse_curve()
    assert collapse_suspected(losses, accuracies, C)
    assert not collapse_suspected(losses[:14], accuracies[:14], C)   # 3 windows of 5 are needed
    assert collapse_suspected(losses[:15], accuracies[:15], C)


def test_the_rule_is_silent_on_a_learning_run_and_on_a_flat_one():
    assert not collapse_suspected(*learning_curve(), C)
    assert not collapse_suspected(*flat_curve(), C)
    # a falling loss with accuracy well above chance at the end: learning, however slowly
    losses, _ = collapse_curve()
    assert not collapse_suspected(losses, [0.05] * len(losses), C)


def test_the_rule_leaves_out_non_finite_values_and_scales_with_the_classes():
    losses, accuracies = collapse_curve()
    assert collapse_suspected(losses + [math.nan], accuracies + [0.0], C)
    assert near_chance(200) == 0.02 and near_chance(10) == 0.2 and near_chance(85742) == 0.02
    # with 10 classes an accuracy of 0.15 is near chance (0.1), with 100 it is learning (chance 0.01)
    assert collapse_suspected(losses, [0.15] * len(losses), 10)
    assert not collapse_suspected(losses, [0.15] * len(losses), 100)


def fake_learner(num_classes=C):
    head = SimpleNamespace(num_sample=num_classes, world_size=1)
    return SimpleNamespace(num_classes=num_classes, head=head, dist=SimpleNamespace(is_main=True))


def test_the_log_hook_warns_once_naming_the_remedies(caplog):
    hook, learner = TrainLog(every=1), fake_learner()
    losses, accuracies = collapse_curve()
    with caplog.at_level(logging.WARNING, logger="training.hooks"):
        for step, (loss, accuracy) in enumerate(zip(losses, accuracies), 1):
            hook.meter.losses = [loss]
            hook._watch_for_collapse(learner, step, accuracy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("step 15: the loss fell from ")
    assert REMEDIES in warnings[0]
    for flag in ("--lr", "--lr_reference_batch", "--margin_warmup_steps", "--scale auto", "--clip_grad_norm"):
        assert flag in warnings[0]


def test_the_log_hook_stays_silent_on_a_learning_run(caplog):
    hook, learner = TrainLog(every=1), fake_learner()
    with caplog.at_level(logging.WARNING, logger="training.hooks"):
        for step, (loss, accuracy) in enumerate(zip(*learning_curve()), 1):
            hook.meter.losses = [loss]
            hook._watch_for_collapse(learner, step, accuracy)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
