"""Margin heads: a margin turns cosines into scaled logits; `MarginHead` owns the class centres.

As in arcface_torch, a margin is a function of the cosine matrix (plus per-sample side
information), separate from the classifier that owns the centres, so the same margin serves
`MarginHead` here and a sharded Partial FC that computes the cosines of its own columns:

    margin = build_margin("pgaml")
    logits = margin(cosine, labels, yaw=yaw_deg)   # labels: column of the target, -1 if not among these
    loss = cross_entropy(logits, labels) + margin.regularizer(norms)

    head = build_head("arcface", 512, num_classes)  # TreB1eN's `kernel`, (embedding_size, num_classes)
    logits = head(embeddings, labels)

Every margin clamps the cosines itself and computes in float32 (float64 stays float64), also under
autocast. Side information comes by keyword: `norms` (B,) embedding norms before L2 normalisation,
`yaw` (B,) degrees, `height` (B,) metres; keywords a margin does not use are ignored. The trainer
calls `set_epoch(epoch_float)` and `set_step(global_step)` on every margin (no-ops for most) and adds
`regularizer(norms)` to the loss. State (AdaFace's norm statistics, CurricularFace's t) changes only
in training mode; under a sharded classifier it is per rank, from the targets that rank holds.

Margin warm-up (`set_margin_warmup(N)`, train.py's --margin_warmup_steps): every margin but SphereFace's
(whose lambda schedule already eases it in) is multiplied by `margin_factor = min(1, step / N)`, set by
`set_step`, so at step 0 the logits are the plain scaled cosines and from step N on the full margin
applies; the factor is a function of the step alone, so a resumed run recomputes it. The scale `s` may be
given as "auto" to `build_margin(..., num_classes=C)`: fixed AdaCos, `s = sqrt(2) * ln(C - 1)`.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from utils import UserError

SIN2_FLOOR = 1e-12   # keeps d sqrt(1 - cos^2) / d cos finite where cos = +-1

SIDE_INFO = {
    "yaw": "per-sample yaw in degrees): run data/prepare_data.py --pose or use pose.npy",
    "norms": "per-sample embedding norms before L2 normalisation): the backbone must return its "
             "un-normalised features or their norms",
    "height": "per-sample capture height in metres)",
}


def _sin_of(cos: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((1.0 - cos * cos).clamp_min(SIN2_FLOOR))


def _angle_of(cos: torch.Tensor) -> torch.Tensor:
    """arccos with a finite gradient at +-1 (atan2 of the floored sine)."""
    return torch.atan2(_sin_of(cos), cos)


def _additive_angular(cos, margin, easy_margin: bool = False):
    """cos(theta + m) where theta + m stays in [0, pi]; elsewhere TreB1eN's `cos - m sin(m)`
    (easy margin: `cos` unchanged where cos <= 0). `margin` is a float or a per-sample tensor."""
    if isinstance(margin, torch.Tensor):
        cos_m, sin_m = torch.cos(margin), torch.sin(margin)
        threshold, drop = -cos_m, sin_m * margin   # cos(pi - m) = -cos(m), sin(pi - m) = sin(m)
    else:   # TreB1eN's constants, as written there
        cos_m, sin_m = math.cos(margin), math.sin(margin)
        threshold, drop = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    shifted = cos * cos_m - _sin_of(cos) * sin_m
    if easy_margin:
        return torch.where(cos > 0, shifted, cos)
    return torch.where(cos > threshold, shifted, cos - drop)


class _ScaledWithTarget(torch.autograd.Function):
    """s * clamp(cosine, -limit, limit), each row's `columns` entry replaced by `target` (scaled already).

    One (B, C) pass each way instead of autograd's clamp, scale and scatter chain, which costs as much
    as the cross-entropy at 100k classes. With limit >= 1 the clamp only removes rounding error
    (|cos| a few ulp above 1, or bf16's 1.0039), so those entries keep the gradient s like their
    neighbours; with limit < 1 (AdaFace) clamped entries get none, as with torch.clamp.
    """

    @staticmethod
    def forward(ctx, cosine, target, columns, scale: float, limit: float):
        dtype = target.dtype
        out = cosine.clamp(-limit, limit) if cosine.dtype == dtype else cosine.to(dtype).clamp_(-limit, limit)
        out.mul_(scale).scatter_(1, columns, target.unsqueeze(1))
        ctx.save_for_backward(columns, cosine if limit < 1 else None)
        ctx.scale, ctx.limit, ctx.cosine_dtype = scale, limit, cosine.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        columns, cosine = ctx.saved_tensors
        grad_target = grad.gather(1, columns).squeeze(1)
        if cosine is None:
            grad_cosine = grad * ctx.scale
        else:
            grad_cosine = torch.where(cosine.abs() <= ctx.limit, grad, 0.0).mul_(ctx.scale)
        grad_cosine.scatter_(1, columns, 0.0)
        return grad_cosine.to(ctx.cosine_dtype), grad_target, None, None, None


class Margin(nn.Module):
    """Base: `forward(cosine, labels, **side)` -> scaled logits. A subclass gives `target_logit`
    (the unscaled target cosine after the margin) or, when non-target columns change too, `logits`."""

    name = ""
    needs: tuple[str, ...] = ()    # side information this margin cannot do without
    cos_limit = 1.0                # cosines are clamped to [-cos_limit, cos_limit]

    def __init__(self, s: float):
        super().__init__()
        if not (isinstance(s, (int, float)) and s > 0):
            raise UserError(f"head '{self.name}': the scale s (--scale) must be a positive number, not {s!r} "
                            "(or auto: fixed AdaCos)")
        self.s = float(s)
        self.margin_warmup_steps = 0
        self.margin_factor = 1.0   # the share of the margin that applies now, in [0, 1] (set_step)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, **side) -> torch.Tensor:
        self._check_side(side)
        # autocast would run the margin trigonometry in half precision: compute in fp32 (or fp64)
        with torch.autocast(cosine.device.type, enabled=False):
            dtype = torch.promote_types(cosine.dtype, torch.float32)
            side = self._side_tensors(side, cosine.shape[0], cosine.device, dtype)
            has_target = labels >= 0
            # rows without a target here gather column 0 and write it back unchanged: no host sync
            columns = labels.clamp_min(0).unsqueeze(1)
            target_cos = cosine.gather(1, columns).squeeze(1).to(dtype).clamp(-self.cos_limit, self.cos_limit)
            return self.logits(cosine, target_cos, has_target, columns, side)

    def logits(self, cosine, target_cos, has_target, columns, side):
        """s * clamp(cosine) with each row's target column replaced by s * target_logit."""
        target = torch.where(has_target, self.target_logit(target_cos, side), target_cos)
        return _ScaledWithTarget.apply(cosine, target * self.s, columns, self.s, self.cos_limit)

    def target_logit(self, target_cos: torch.Tensor, side: dict) -> torch.Tensor:
        raise NotImplementedError

    def regularizer(self, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Extra loss term the trainer adds (MagFace's g(a)); 0 for the others."""
        return torch.zeros((), device=None if norms is None else norms.device)

    def set_epoch(self, epoch: float) -> None:
        """Called by the trainer with the fractional epoch; schedules override it."""

    def set_step(self, step: int) -> None:
        """Called by the trainer with the global step (steps taken so far); schedules extend it."""
        if self.margin_warmup_steps:
            self.margin_factor = min(1.0, max(0, int(step)) / self.margin_warmup_steps)

    def set_margin_warmup(self, steps: int) -> None:
        """Ramp the margin linearly from 0 (step 0) to its full value (step `steps` on); 0 turns it off."""
        if int(steps) != steps or steps < 0:
            raise UserError(f"--margin_warmup_steps must be a whole number of steps >= 0, not {steps!r}")
        self.margin_warmup_steps = int(steps)
        self.margin_factor = 0.0 if self.margin_warmup_steps else 1.0

    def _check_side(self, side: dict) -> None:
        for key in self.needs:
            if side.get(key) is None:
                raise UserError(f"head '{self.name}' needs {key}= ({SIDE_INFO[key]}")

    @staticmethod
    def _side_tensors(side: dict, batch: int, device, dtype) -> dict:
        tensors = {}
        for key, value in side.items():
            if value is None:
                continue
            value = torch.as_tensor(value, device=device).to(dtype).reshape(-1)
            if value.numel() != batch:
                raise ValueError(f"{key}= has {value.numel()} values for a batch of {batch}")
            tensors[key] = value
        return tensors

    def extra_repr(self) -> str:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return ", ".join(f"{p}={getattr(self, p)}" for p in names if hasattr(self, p))


class ArcFace(Margin):
    """ArcFace, Deng et al., CVPR 2019 (arXiv:1801.07698): s*cos(theta_y + m), TreB1eN's fallback."""

    name = "arcface"

    def __init__(self, s: float = 64.0, m: float = 0.5):
        super().__init__(s)
        self.m = m

    def target_logit(self, target_cos, side):
        return _additive_angular(target_cos, self.m * self.margin_factor)


def pose_ratio(yaw_deg: torch.Tensor, height_m: torch.Tensor | None = None) -> torch.Tensor:
    """PGAML's r_i in [0, 1]: |yaw|/90 (yaw clipped to 90 degrees), or with capture height
    0.5*(|yaw|/90 + h/20). Unknown yaw (NaN) gives 0; unknown height (NaN) the yaw-only ratio."""
    yaw_term = yaw_deg.abs().div_(90.0).clamp_(max=1.0)
    ratio = yaw_term
    if height_m is not None:
        with_height = (height_m / 20.0).add_(yaw_term).mul_(0.5)
        ratio = torch.where(torch.isnan(height_m), yaw_term, with_height)
    return ratio.clamp_(0.0, 1.0).nan_to_num_(nan=0.0)


class PGAML(Margin):
    """Pose-Guided Angular Margin Loss (this project, ARCHITECTURE.md): ArcFace with m_i = m1 + m2*r_i from yaw/height.

    A sample with unknown pose (NaN yaw) gets r_i = 0, the plain ArcFace margin m1. With
    `warmup_epochs` > 0 the pose term ramps linearly from 0 to m2 over that many epochs (`set_epoch`).
    """

    name = "pgaml"
    needs = ("yaw",)

    def __init__(self, s: float = 64.0, m1: float = 0.5, m2: float = 0.2, warmup_epochs: float = 0.0):
        super().__init__(s)
        self.m1, self.m2, self.warmup_epochs = m1, m2, float(warmup_epochs)
        self.pose_weight = 0.0 if self.warmup_epochs > 0 else 1.0

    def set_epoch(self, epoch: float) -> None:
        if self.warmup_epochs > 0:
            self.pose_weight = min(1.0, max(0.0, float(epoch) / self.warmup_epochs))

    @torch.no_grad()   # side information carries no gradient
    def sample_margins(self, yaw_deg: torch.Tensor, height_m: torch.Tensor | None = None) -> torch.Tensor:
        margins = pose_ratio(yaw_deg, height_m).mul_(self.m2 * self.pose_weight).add_(self.m1)
        return margins.mul_(self.margin_factor) if self.margin_factor != 1.0 else margins

    def target_logit(self, target_cos, side):
        return _additive_angular(target_cos, self.sample_margins(side["yaw"], side.get("height")))


class CosFace(Margin):
    """CosFace / AM-Softmax, Wang et al., CVPR 2018 (arXiv:1801.09414): s*(cos(theta_y) - m)."""

    name = "cosface"

    def __init__(self, s: float = 64.0, m: float = 0.35):
        super().__init__(s)
        self.m = m

    def target_logit(self, target_cos, side):
        return target_cos - self.m * self.margin_factor


def _chebyshev_cos(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m*theta) as the Chebyshev polynomial T_m(cos theta): exact, smooth, no arccos."""
    previous, current = torch.ones_like(cos), cos
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * cos * current - previous
    return current


class SphereFace(Margin):
    """SphereFace (A-Softmax), Liu et al., CVPR 2017 (arXiv:1704.08063): psi(theta_y) = (-1)^k cos(m theta_y) - 2k.

    The target is (lambda*cos + psi)/(1 + lambda) with the Caffe schedule
    lambda = max(lambda_min, base*(1 + gamma*step)^-power) over the step from `set_step`. Features are
    normalised and scaled by `s` like every other head here; `s=None` scales each row by its feature
    norm instead (the original A-Softmax; needs norms=).
    """

    name = "sphereface"

    def __init__(self, s: float | None = 64.0, m: int = 4, base: float = 1000.0, gamma: float = 0.12,
                 power: float = 1.0, lambda_min: float = 5.0):
        super().__init__(1.0 if s is None else s)
        if int(m) != m or m < 1:
            raise UserError(f"head 'sphereface' needs an integer margin m >= 1, got {m}")
        self.s = s
        self.m, self.base, self.gamma, self.power, self.lambda_min = int(m), base, gamma, power, lambda_min
        self.needs = ("norms",) if s is None else ()
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def set_margin_warmup(self, steps: int) -> None:
        if steps:
            raise UserError("--margin_warmup_steps does not apply to --head sphereface: its lambda schedule "
                            "(head options base, gamma, power, lambda_min) already eases its margin in")

    @property
    def lambda_(self) -> float:
        return max(self.lambda_min, self.base * (1.0 + self.gamma * self.step) ** -self.power)

    def target_logit(self, target_cos, side):
        with torch.no_grad():   # k is piecewise constant
            k = torch.floor(self.m * _angle_of(target_cos) / math.pi).clamp(0, self.m - 1)
        psi = (1.0 - 2.0 * (k % 2)) * _chebyshev_cos(target_cos, self.m) - 2.0 * k
        lam = self.lambda_
        return (lam * target_cos + psi) / (1.0 + lam)

    def logits(self, cosine, target_cos, has_target, columns, side):
        if self.s is not None:
            return super().logits(cosine, target_cos, has_target, columns, side)
        # A-Softmax: logits ||x|| cos, the norms' gradient (if they carry one) flows as upstream
        target = torch.where(has_target, self.target_logit(target_cos, side), target_cos)
        norms = side["norms"].unsqueeze(1)
        logits = cosine.to(target.dtype).clamp(-1.0, 1.0) * norms
        return logits.scatter(1, columns, target.unsqueeze(1) * norms)


class Combined(Margin):
    """Combined margin of InsightFace (Deng et al., CVPR 2019, arcface_torch): s*(cos(m1*theta_y + m2) - m3).

    Where m1*theta_y + m2 would pass pi, the target is cos - m3 - m2*sin(m2) (arcface_torch's
    fallback); `easy_margin` keeps cos unchanged where cos <= 0 instead.
    """

    name = "combined"

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 easy_margin: bool = False):
        super().__init__(s)
        if m1 <= 0:
            raise UserError(f"head 'combined' needs m1 > 0, got {m1}")
        self.m1, self.m2, self.m3, self.easy_margin = m1, m2, m3, easy_margin

    def margins(self) -> tuple[float, float, float]:
        """(m1, m2, m3) as they apply now: during the margin warm-up m1 -> 1 + (m1 - 1) f, m2 f, m3 f."""
        f = self.margin_factor
        if f == 1.0:
            return self.m1, self.m2, self.m3
        return 1.0 + (self.m1 - 1.0) * f, self.m2 * f, self.m3 * f

    def target_logit(self, target_cos, side):
        m1, m2, m3 = self.margins()
        if m1 == 1.0:
            shifted = target_cos * math.cos(m2) - _sin_of(target_cos) * math.sin(m2)
        else:
            shifted = torch.cos(m1 * _angle_of(target_cos) + m2)
        shifted = shifted - m3
        if self.easy_margin:
            return torch.where(target_cos > 0, shifted, target_cos)
        largest_angle = (math.pi - m2) / m1
        threshold = math.cos(largest_angle) if largest_angle < math.pi else -math.inf
        drop = m3 + math.sin(math.pi - m2) * m2
        return torch.where(target_cos > threshold, shifted, target_cos - drop)


class AdaFace(Margin):
    """AdaFace, Kim et al., CVPR 2022 (arXiv:2204.00964): angular and additive margins scaled by the
    feature norm, standardised with an EMA of the batch mean/std of the norms (official head.py)."""

    name = "adaface"
    needs = ("norms",)
    eps = 1e-3
    cos_limit = 1.0 - eps      # the official code clamps every cosine to [-1+eps, 1-eps]

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01):
        super().__init__(s)
        self.m, self.h, self.t_alpha = m, h, t_alpha
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    @torch.no_grad()
    def _update_statistics(self, norms: torch.Tensor) -> None:
        self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean().float())
        if norms.numel() > 1:   # the std of one sample is undefined
            self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.std().float())

    def target_logit(self, target_cos, side):
        norms = side["norms"].detach().clamp(0.001, 100.0)
        if self.training:
            self._update_statistics(norms)
        mean, std = self.batch_mean.to(norms.dtype), self.batch_std.to(norms.dtype)
        scaler = (norms - mean) / (std + self.eps)
        scaler = (scaler * self.h).clamp(-1.0, 1.0)
        m = self.m * self.margin_factor
        angle = (torch.acos(target_cos) - m * scaler).clamp(self.eps, math.pi - self.eps)
        return torch.cos(angle) - (m + m * scaler)


class MagFace(Margin):
    """MagFace, Meng et al., CVPR 2021 (arXiv:2103.06627): ArcFace margin m(a) rising linearly with the
    feature norm a in [l_a, u_a], plus lambda_g*g(a), g(a) = a/u_a^2 + 1/a (official easy margin)."""

    name = "magface"
    needs = ("norms",)

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45,
                 u_m: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True):
        super().__init__(s)
        self.l_a, self.u_a, self.l_m, self.u_m = l_a, u_a, l_m, u_m
        self.lambda_g, self.easy_margin = lambda_g, easy_margin

    def sample_margins(self, norms: torch.Tensor) -> torch.Tensor:
        a = norms.clamp(self.l_a, self.u_a)
        margins = (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m
        return margins * self.margin_factor if self.margin_factor != 1.0 else margins   # l_m, u_m ramp in

    def target_logit(self, target_cos, side):
        # the norms keep their gradient: the margin itself pulls on the feature norm (as upstream)
        return _additive_angular(target_cos, self.sample_margins(side["norms"]), self.easy_margin)

    def regularizer(self, norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise UserError(f"head 'magface' needs norms= ({SIDE_INFO['norms']} for its regulariser")
        a = norms.float().clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a ** 2 + 1.0 / a).mean()


class CurricularFace(Margin):
    """CurricularFace, Huang et al., CVPR 2020 (arXiv:2004.00288): ArcFace target; negatives harder than
    cos(theta_y + m) become cos*(t + cos), t an EMA (alpha) of the mean target cosine."""

    name = "curricularface"

    def __init__(self, s: float = 64.0, m: float = 0.5, t_alpha: float = 0.01):
        super().__init__(s)
        self.m, self.t_alpha = m, t_alpha
        self.register_buffer("t", torch.zeros(1))

    @torch.no_grad()
    def _update_t(self, target_cos: torch.Tensor, has_target: torch.Tensor) -> None:
        count = has_target.sum()
        mean = (target_cos * has_target).sum() / count.clamp_min(1)
        updated = self.t_alpha * mean + (1 - self.t_alpha) * self.t
        self.t.copy_(torch.where(count > 0, updated, self.t))

    def logits(self, cosine, target_cos, has_target, columns, side):
        m = self.m * self.margin_factor   # the margin warm-up eases m in; the hard negatives' weighting stays
        shifted = target_cos * math.cos(m) - _sin_of(target_cos) * math.sin(m)
        target = torch.where(has_target, _additive_angular(target_cos, m), target_cos)
        if self.training:   # upstream updates t before re-weighting with it
            self._update_t(target_cos.detach(), has_target)
        cosine = cosine.to(target.dtype).clamp(-1.0, 1.0)
        hard = (cosine > shifted.detach().unsqueeze(1)) & has_target.unsqueeze(1)
        t = self.t.to(cosine.dtype)
        logits = torch.where(hard, cosine * (t + cosine), cosine) * self.s
        return logits.scatter_(1, columns, (target * self.s).unsqueeze(1))


MARGINS: dict[str, type[Margin]] = {cls.name: cls for cls in (
    ArcFace, PGAML, CosFace, SphereFace, Combined, AdaFace, MagFace, CurricularFace)}


def list_heads() -> list[str]:
    return list(MARGINS)


def build_margin(name: str, num_classes: int | None = None, margin_warmup_steps: int = 0, **kw) -> Margin:
    """The margin `name` with its options `kw`; `s="auto"` is fixed AdaCos' scale for `num_classes`
    (`adacos_scale`); `margin_warmup_steps` > 0 ramps the margin in (`Margin.set_margin_warmup`)."""
    cls = MARGINS.get(str(name).lower())
    if cls is None:
        raise UserError(f"unknown head '{name}'; choose one of: {', '.join(MARGINS)}")
    options = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise UserError(f"head '{cls.name}' has no option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(options)}")
    if isinstance(kw.get("s"), str) and kw["s"].strip().lower() == "auto":
        if num_classes is None:
            raise UserError(f"head '{cls.name}': the scale s=auto needs the number of classes")
        kw["s"] = adacos_scale(num_classes)
    margin = cls(**kw)
    margin.set_margin_warmup(margin_warmup_steps)
    return margin


def adacos_scale(num_classes: int) -> float:
    """The fixed AdaCos scale (Zhang et al., CVPR 2019, arXiv:1905.00292): s = sqrt(2) * ln(C - 1), the scale
    at which a sample 45 degrees from its centre and 90 degrees from the C - 1 others has probability 1/2 of
    its class (e^(s cos 45) = C - 1): where the softmax's gradient on the target angle is strongest."""
    if num_classes < 3:
        raise UserError(f"--scale auto (sqrt(2) * ln(C - 1)) needs at least 3 classes, not {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


class MarginHead(nn.Module):
    """Classifier with the class centres `kernel` (embedding_size, num_classes), TreB1eN's name, shape
    and initialisation: cosines of normalised embeddings and columns, then the margin."""

    def __init__(self, embedding_size: int, num_classes: int, margin: Margin):
        super().__init__()
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes))
        with torch.no_grad():
            self.kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, **side) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.kernel, dim=0)
        return self.margin(cosine, labels, **side)

    def regularizer(self, norms: torch.Tensor | None = None) -> torch.Tensor:
        return self.margin.regularizer(norms)

    def set_epoch(self, epoch: float) -> None:
        self.margin.set_epoch(epoch)

    def set_step(self, step: int) -> None:
        self.margin.set_step(step)


def build_head(name: str, embedding_size: int, num_classes: int, **kw) -> MarginHead:
    return MarginHead(embedding_size, num_classes, build_margin(name, num_classes=num_classes, **kw))
