"""Margin heads against formulas written here independently in NumPy (float64), plus gradients,
autocast, side information, state and TreB1eN's Arcface."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heads import MarginHead, build_head, build_margin, list_heads
from utils import UserError, seed_everything

ALL_HEADS = ["arcface", "pgaml", "cosface", "sphereface", "combined", "adaface", "magface", "curricularface"]
S = 64.0

YAW = [0.0, 30.0, -45.0, 90.0, 120.0, float("nan")]
NORMS = [5.0, 15.0, 30.0, 60.0, 100.0, 150.0]
LABELS = [2, -1, 0, 8, 5, 3]


def side_info(batch: int = 6, dtype=torch.float64) -> dict:
    reps = -(-batch // len(YAW))
    return {"yaw": torch.tensor((YAW * reps)[:batch], dtype=dtype),
            "norms": torch.tensor((NORMS * reps)[:batch], dtype=dtype)}


def cosines(seed: int = 0, shape=(6, 9), low=-0.95, high=0.95) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape)


# ---- NumPy references, one per head (defaults from the papers' code) -------------------------------

def arc_target(c, m, easy=False):
    theta = np.arccos(c)
    shifted = np.cos(theta + m)
    if easy:
        return np.where(c > 0, shifted, c)
    return np.where(theta + m < np.pi, shifted, c - m * np.sin(m))


def pgaml_margin(yaw, height=None, m1=0.5, m2=0.2):
    yaw = np.asarray(yaw, dtype=np.float64)
    ratio = np.minimum(np.abs(yaw), 90.0) / 90.0
    if height is not None:
        height = np.asarray(height, dtype=np.float64)
        with_height = np.clip(0.5 * (ratio + height / 20.0), 0.0, 1.0)
        ratio = np.where(np.isnan(height), ratio, with_height)
    ratio = np.where(np.isnan(yaw), 0.0, ratio)
    return m1 + m2 * ratio


def sphere_target(c, lam, m=4):
    theta = np.arccos(c)
    k = np.floor(m * theta / np.pi)
    psi = (-1.0) ** k * np.cos(m * theta) - 2 * k
    return (lam * c + psi) / (1 + lam)


def combined_target(c, m1, m2, m3):
    theta = np.arccos(c)
    return np.where(m1 * theta + m2 <= np.pi, np.cos(m1 * theta + m2) - m3, c - m3 - m2 * np.sin(m2))


def adaface_scaler(norms, mean, std, h=0.333):
    return np.clip(h * (np.clip(norms, 0.001, 100) - mean) / (std + 1e-3), -1, 1)


def adaface_logits(c, labels, norms, mean=20.0, std=100.0, m=0.4):
    c = np.clip(c, -1 + 1e-3, 1 - 1e-3)
    scaler = adaface_scaler(norms, mean, std)
    out = c.copy()
    for i, y in enumerate(labels):
        if y >= 0:
            angle = np.clip(np.arccos(c[i, y]) - m * scaler[i], 1e-3, np.pi - 1e-3)
            out[i, y] = np.cos(angle) - m - m * scaler[i]
    return S * out


def curricular_logits(c, labels, t, m=0.5):
    out = c.copy()
    for i, y in enumerate(labels):
        if y >= 0:
            phi = np.cos(np.arccos(c[i, y]) + m)
            hard = c[i] > phi
            out[i, hard] = c[i, hard] * (t + c[i, hard])
            out[i, y] = arc_target(c[i, y], m)
    return S * out


def target_only(c, labels, target_fn):
    out = c.copy()
    for i, y in enumerate(labels):
        if y >= 0:
            out[i, y] = target_fn(c[i, y], i)
    return S * out


def reference_logits(name, c, labels, yaw, norms):
    magface_m = (0.8 - 0.45) / (110 - 10) * (np.clip(norms, 10, 110) - 10) + 0.45
    if name == "adaface":
        return adaface_logits(c, labels, norms)
    if name == "curricularface":
        return curricular_logits(c, labels, t=0.0)
    target = {
        "arcface": lambda cy, i: arc_target(cy, 0.5),
        "combined": lambda cy, i: arc_target(cy, 0.5),
        "pgaml": lambda cy, i: arc_target(cy, pgaml_margin(yaw[i])),
        "cosface": lambda cy, i: cy - 0.35,
        "sphereface": lambda cy, i: sphere_target(cy, lam=1000.0),
        "magface": lambda cy, i: arc_target(cy, magface_m[i], easy=True),
    }[name]
    return target_only(c, labels, target)


def run_margin(margin, c: np.ndarray, labels, dtype=torch.float64, **side):
    side = side or side_info(len(labels), dtype)
    out = margin(torch.tensor(c, dtype=dtype), torch.tensor(labels), **side)
    return out.detach().double().numpy()


# ---- registry and interface ----------------------------------------------------------------------

def test_registry_lists_every_head():
    assert list_heads() == ALL_HEADS


def test_unknown_head_lists_choices():
    with pytest.raises(UserError, match="unknown head 'nope'.*arcface.*pgaml.*curricularface"):
        build_head("nope", 8, 4)


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="head 'arcface' has no option.*margin.*options: s, m"):
        build_margin("arcface", margin=0.3)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_shapes_dtype_and_kernel(name):
    head = build_head(name, 16, 11)
    assert isinstance(head, MarginHead)
    assert head.kernel.shape == (16, 11)
    assert "kernel" in head.state_dict()
    torch.testing.assert_close(head.kernel.norm(dim=0), torch.ones(11))
    embeddings = torch.randn(6, 16)
    out = head(embeddings, torch.tensor(LABELS), **side_info(6, torch.float32))
    assert out.shape == (6, 11) and out.dtype == torch.float32


def test_arcface_state_dict_is_treb1en_s():
    head = build_head("arcface", 512, 10)
    assert list(head.state_dict()) == ["kernel"]
    assert head.state_dict()["kernel"].shape == (512, 10)


# ---- logits against the references ---------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_HEADS)
def test_logits_match_reference(name):
    margin = build_margin(name).eval()
    c = cosines(1)
    expected = reference_logits(name, c, LABELS, np.array(YAW), np.array(NORMS))
    np.testing.assert_allclose(run_margin(margin, c, LABELS), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(run_margin(margin, c, LABELS, torch.float32), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_rows_without_target_get_only_the_scale(name):
    margin = build_margin(name).train()
    c = cosines(2)
    labels = [-1] * 6
    limit = 1 - 1e-3 if name == "adaface" else 1.0
    np.testing.assert_allclose(run_margin(margin, c, labels), S * np.clip(c, -limit, limit), atol=1e-12)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_cosines_outside_unit_range_are_clamped(name):
    margin = build_margin(name).eval()
    c = np.array([[1.2, -1.3, 0.5], [-1.5, 2.0, 0.0]])
    out = run_margin(margin, c, [0, 1], **side_info(2))
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= S * 1.0 + 1e-9 or name == "sphereface"   # psi reaches -2k - 1


def test_gradient_of_clamped_cosines():
    # |cos| a rounding error above 1 keeps the gradient s; AdaFace's own clamp at 1 - 1e-3 stops it
    c = torch.tensor([[0.2, 1.0000001, 0.9995, -1.0000001, 0.5]], dtype=torch.float64, requires_grad=True)
    for name, expected in (("arcface", [S, S, S, S]), ("adaface", [0.0, 0.0, 0.0, S])):
        margin = build_margin(name).eval()
        logits = margin(c, torch.tensor([0]), norms=torch.tensor([20.0]))
        (grad,) = torch.autograd.grad(logits[0, 1:].sum(), c)
        np.testing.assert_allclose(grad[0, 1:].numpy(), expected)


def test_combined_general_margins():
    c = cosines(3)
    margin = build_margin("combined", m1=1.35, m2=0.25, m3=0.1)
    expected = target_only(c, LABELS, lambda cy, i: combined_target(cy, 1.35, 0.25, 0.1))
    np.testing.assert_allclose(run_margin(margin, c, LABELS), expected, atol=1e-9)
    cosface_like = build_margin("combined", m2=0.0, m3=0.35)
    expected = target_only(c, LABELS, lambda cy, i: cy - 0.35)
    np.testing.assert_allclose(run_margin(cosface_like, c, LABELS), expected, atol=1e-9)


def test_sphereface_lambda_schedule():
    margin = build_margin("sphereface")
    assert margin.lambda_ == 1000.0
    margin.set_step(100)
    assert margin.lambda_ == pytest.approx(1000.0 / (1 + 0.12 * 100))
    c = cosines(4)
    expected = target_only(c, LABELS, lambda cy, i: sphere_target(cy, 1000.0 / 13.0))
    np.testing.assert_allclose(run_margin(margin, c, LABELS), expected, atol=1e-9)
    margin.set_step(10**6)
    assert margin.lambda_ == 5.0


def test_sphereface_without_scale_uses_feature_norms():
    margin = build_margin("sphereface", s=None)
    c = cosines(5)
    norms = np.array(NORMS)
    expected = target_only(c, LABELS, lambda cy, i: sphere_target(cy, 1000.0)) / S * norms[:, None]
    np.testing.assert_allclose(run_margin(margin, c, LABELS), expected, atol=1e-9)
    with pytest.raises(UserError, match="needs norms="):
        margin(torch.tensor(c), torch.tensor(LABELS))


# ---- PGAML ---------------------------------------------------------------------------------------

def recovered_margins(margin, yaw, height=None, target_cos=0.3):
    """The margin each sample got, read back from its target logit s*cos(theta + m)."""
    batch = len(yaw)
    c = np.full((batch, 2), target_cos)
    side = {"yaw": torch.tensor(yaw, dtype=torch.float64)}
    if height is not None:
        side["height"] = torch.tensor(height, dtype=torch.float64)
    out = run_margin(margin, c, [0] * batch, **side)
    return np.arccos(out[:, 0] / S) - np.arccos(target_cos)


def test_pgaml_margins_from_yaw():
    yaw = [0.0, 45.0, 90.0, -90.0, 135.0, float("nan"), -30.0]
    expected = [0.5, 0.6, 0.7, 0.7, 0.7, 0.5, 0.5 + 0.2 / 3]
    np.testing.assert_allclose(recovered_margins(build_margin("pgaml"), yaw), expected, atol=1e-9)
    np.testing.assert_allclose(pgaml_margin(yaw), expected, atol=1e-12)


def test_pgaml_margins_from_yaw_and_height():
    yaw = [0.0, 45.0, 90.0, 90.0, 0.0, 90.0, float("nan"), 45.0, -45.0]
    height = [0.0, 10.0, 20.0, 0.0, 20.0, 40.0, 10.0, float("nan"), 10.0]
    expected = [0.5, 0.6, 0.7, 0.6, 0.6, 0.7, 0.5, 0.6, 0.6]
    np.testing.assert_allclose(recovered_margins(build_margin("pgaml"), yaw, height), expected, atol=1e-9)
    np.testing.assert_allclose(pgaml_margin(yaw, height), expected, atol=1e-12)


def test_pgaml_fallback_below_threshold():
    # cos(theta_y) <= cos(pi - m_i): s*(cos - m_i*sin(m_i)) with the sample's own m_i
    margin = build_margin("pgaml")
    c = np.array([[-0.85, 0.1], [-0.85, 0.1], [-0.99, 0.1]])   # cos(pi - 0.7) = -0.765, cos(pi - 0.5) = -0.878
    out = run_margin(margin, c, [0, 0, 0], yaw=torch.tensor([90.0, 0.0, 0.0]))
    np.testing.assert_allclose(out[:, 0] / S, [-0.85 - 0.7 * math.sin(0.7), math.cos(math.acos(-0.85) + 0.5),
                                               -0.99 - 0.5 * math.sin(0.5)], atol=1e-12)


def test_pgaml_pose_warmup():
    margin = build_margin("pgaml", warmup_epochs=2)
    yaw = [90.0, 45.0]
    np.testing.assert_allclose(recovered_margins(margin, yaw), [0.5, 0.5], atol=1e-9)
    margin.set_epoch(1.0)
    np.testing.assert_allclose(recovered_margins(margin, yaw), [0.6, 0.55], atol=1e-9)
    margin.set_epoch(3.5)
    np.testing.assert_allclose(recovered_margins(margin, yaw), [0.7, 0.6], atol=1e-9)


# ---- side information ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [("pgaml", "yaw"), ("adaface", "norms"), ("magface", "norms")])
def test_missing_side_information_is_a_user_error(name, key):
    head = build_head(name, 8, 5)
    side = side_info(3, torch.float32)
    del side[key]
    with pytest.raises(UserError, match=rf"head '{name}' needs {key}= \("):
        head(torch.randn(3, 8), torch.tensor([0, 1, 2]), **side)


def test_pgaml_error_points_at_pose_data():
    with pytest.raises(UserError, match=r"needs yaw= \(per-sample yaw in degrees\).*--pose.*pose.npy"):
        build_margin("pgaml")(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_heads_ignore_side_information_they_do_not_use():
    c = cosines(6)
    plain = run_margin(build_margin("arcface"), c, LABELS, yaw=None)
    np.testing.assert_array_equal(run_margin(build_margin("arcface"), c, LABELS), plain)


# ---- MagFace regulariser, stateful margins -------------------------------------------------------

def test_magface_regularizer():
    norms = torch.tensor(NORMS)
    a = np.clip(NORMS, 10, 110)
    expected = 35.0 * np.mean(a / 110**2 + 1 / a)
    assert build_margin("magface").regularizer(norms).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UserError, match="needs norms="):
        build_margin("magface").regularizer(None)
    for name in ALL_HEADS:
        if name != "magface":
            assert build_margin(name).regularizer(norms).item() == 0.0


def test_adaface_statistics_update_only_in_training():
    margin = build_margin("adaface").eval()
    c = cosines(7)
    run_margin(margin, c, LABELS)
    assert margin.batch_mean.item() == 20.0 and margin.batch_std.item() == 100.0
    margin.train()
    out = run_margin(margin, c, LABELS)
    clipped = np.clip(NORMS, 0.001, 100)
    mean = 0.99 * 20 + 0.01 * clipped.mean()
    std = 0.99 * 100 + 0.01 * clipped.std(ddof=1)
    assert margin.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert margin.batch_std.item() == pytest.approx(std, rel=1e-6)
    np.testing.assert_allclose(out, adaface_logits(c, LABELS, np.array(NORMS), mean, std), atol=1e-4)


def test_curricularface_t_update_only_in_training():
    margin = build_margin("curricularface").eval()
    c = cosines(8)
    run_margin(margin, c, LABELS)
    assert margin.t.item() == 0.0
    margin.train()
    out = run_margin(margin, c, LABELS)
    targets = [c[i, y] for i, y in enumerate(LABELS) if y >= 0]
    t = 0.01 * np.mean(targets)
    assert margin.t.item() == pytest.approx(t, rel=1e-6)
    np.testing.assert_allclose(out, curricular_logits(c, LABELS, t), atol=1e-5)
    run_margin(margin, c, [-1] * 6)   # no target here: t unchanged
    assert margin.t.item() == pytest.approx(t, rel=1e-6)


# ---- gradients and precision ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_HEADS)
def test_margin_gradcheck(name):
    margin = build_margin(name).eval()   # frozen state
    # cosines away from the switch points (cos(pi - m) ~ -0.88, the easy margin's 0)
    c = torch.tensor(cosines(9, (5, 7), low=0.05, high=0.9), requires_grad=True)
    labels = torch.tensor([3, -1, 0, 6, 2])
    # AdaFace detaches the norms (as upstream); MagFace's margin passes gradient to them
    norms = torch.tensor([12.0, 35.0, 60.0, 90.0, 105.0], dtype=torch.float64,
                         requires_grad=name == "magface")
    yaw = torch.tensor([0.0, 20.0, -60.0, 90.0, float("nan")], dtype=torch.float64)

    def logits(cos, norms):
        return margin(cos, labels, norms=norms, yaw=yaw)

    assert torch.autograd.gradcheck(logits, (c, norms))


@pytest.mark.parametrize("name", ["arcface", "pgaml"])
def test_head_gradcheck(name):
    seed_everything(3)
    head = build_head(name, 6, 5).double().eval()
    embeddings = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, -1, 2])
    yaw = torch.tensor([10.0, 50.0, 80.0, 0.0], dtype=torch.float64)

    def logits(embeddings, kernel):
        return torch.func.functional_call(head, {"kernel": kernel}, (embeddings, labels), {"yaw": yaw})

    kernel = head.kernel.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(logits, (embeddings, kernel))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_bf16_autocast_close_to_fp32(name):
    seed_everything(4)
    head = build_head(name, 64, 50).eval()
    embeddings = torch.randn(16, 64) * 8
    labels = torch.randint(0, 50, (16,))
    labels[3] = -1
    side = side_info(16, torch.float32)

    def step(autocast: bool):
        head.zero_grad()
        e = embeddings.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = head(e, labels, **side)
        loss = F.cross_entropy(out, labels, ignore_index=-1)
        loss.backward()
        return out, loss, e.grad, head.kernel.grad.clone()

    out16, loss16, e16, k16 = step(True)
    out32, loss32, e32, k32 = step(False)
    assert out16.dtype == torch.float32
    for tensor in (out16, loss16, e16, k16):
        assert torch.isfinite(tensor).all()
    # bf16 cosines carry ~3 significant digits; s = 64 magnifies them
    assert (out16 - out32).abs().max() < 1.0
    assert abs(loss16.item() - loss32.item()) < 0.05 * abs(loss32.item()) + 0.05
    for g16, g32 in ((e16, e32), (k16, k32)):
        assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("name", ALL_HEADS)
def test_half_precision_cosines_give_fp32_logits(name):
    margin = build_margin(name).eval()
    c = torch.tensor(cosines(10), dtype=torch.float32).bfloat16()
    labels = torch.tensor(LABELS)
    side = side_info(6, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = margin(c, labels, **side)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, margin(c.float(), labels, **side), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_deterministic_with_seed(name):
    def run():
        seed_everything(123)
        head = build_head(name, 32, 20)
        embeddings = torch.randn(8, 32)
        labels = torch.randint(-1, 20, (8,))
        return head.kernel.detach().clone(), head(embeddings, labels, **side_info(8, torch.float32)).detach()

    (k1, out1), (k2, out2) = run(), run()
    assert torch.equal(k1, k2) and torch.equal(out1, out2)


# ---- TreB1eN's Arcface --------------------------------------------------------------------------

def treb1en_arcface_forward(embeddings, kernel, label, s=64.0, m=0.5):
    """TreB1eN/InsightFace_Pytorch model.Arcface.forward, re-typed from its definition."""
    kernel_norm = kernel / torch.norm(kernel, 2, 0, True)
    cos_theta = torch.mm(embeddings, kernel_norm).clamp(-1, 1)
    sin_theta = torch.sqrt(1 - torch.pow(cos_theta, 2))
    cos_theta_m = cos_theta * math.cos(m) - sin_theta * math.sin(m)
    cond_mask = (cos_theta - math.cos(math.pi - m)) <= 0
    keep_val = cos_theta - math.sin(math.pi - m) * m
    cos_theta_m[cond_mask] = keep_val[cond_mask]
    output = cos_theta * 1.0
    rows = torch.arange(len(embeddings))
    output[rows, label] = cos_theta_m[rows, label]
    return output * s


def test_treb1en_arcface_equivalence():
    torch.manual_seed(5)
    classes = 300
    kernel = torch.empty(512, classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    head = build_head("arcface", 512, classes)
    head.load_state_dict({"kernel": kernel}, strict=True)   # a TreB1eN head_*.pth
    labels = torch.randint(0, classes, (64,))
    embeddings = torch.randn(64, 512)
    # some samples opposite their centre, to exercise the cos <= cos(pi - m) fallback
    embeddings[:8] = -kernel[:, labels[:8]].T + 0.05 * torch.randn(8, 512)
    embeddings = embeddings / torch.norm(embeddings, 2, 1, True)   # TreB1eN's backbones end in l2_norm
    expected = treb1en_arcface_forward(embeddings, kernel, labels)
    assert (expected[torch.arange(8), labels[:8]] < S * math.cos(math.pi - 0.5)).all()
    with torch.no_grad():
        torch.testing.assert_close(head(embeddings, labels), expected, rtol=0, atol=1e-5)


# ---- margin warm-up (--margin_warmup_steps) and the fixed AdaCos scale (--scale auto) ------------

WARMUP = 10
# each head with its defaults, and with every margin at half its value (Combined: m1 halfway to 1)
HALF_MARGINS = {
    "arcface": {"m": 0.25}, "pgaml": {"m1": 0.25, "m2": 0.1}, "cosface": {"m": 0.175},
    "combined": {"m1": 0.95, "m2": 0.2, "m3": 0.1}, "adaface": {"m": 0.2}, "magface": {"l_m": 0.225, "u_m": 0.4},
    "curricularface": {"m": 0.25},
}
FULL_MARGINS = {"combined": {"m1": 0.9, "m2": 0.4, "m3": 0.2}}   # a combined margin that uses all three


def warmed_up(name: str, step: int):
    margin = build_margin(name, margin_warmup_steps=WARMUP, **FULL_MARGINS.get(name, {}))
    margin.eval()   # AdaFace's and CurricularFace's statistics stay put between the compared calls
    margin.set_step(step)
    return margin


@pytest.mark.parametrize("name", list(HALF_MARGINS))
def test_margin_warmup_ramps_from_plain_cosines_to_the_full_margin(name):
    c = cosines(11)
    plain = S * np.clip(c, -warmed_up(name, 0).cos_limit, warmed_up(name, 0).cos_limit)
    at_start = run_margin(warmed_up(name, 0), c, LABELS)
    if name == "curricularface":   # its hard negatives keep their re-weighting: compare the targets
        rows = [i for i, y in enumerate(LABELS) if y >= 0]
        cols = [LABELS[i] for i in rows]
        np.testing.assert_allclose(at_start[rows, cols], plain[rows, cols], atol=1e-9)
    else:
        np.testing.assert_allclose(at_start, plain, atol=1e-9)
    half = build_margin(name, **HALF_MARGINS[name]).eval()
    np.testing.assert_allclose(run_margin(warmed_up(name, WARMUP // 2), c, LABELS), run_margin(half, c, LABELS),
                               atol=1e-9)
    full = build_margin(name, **FULL_MARGINS.get(name, {})).eval()
    for step in (WARMUP, 3 * WARMUP):
        np.testing.assert_array_equal(run_margin(warmed_up(name, step), c, LABELS), run_margin(full, c, LABELS))


def test_margin_warmup_is_a_function_of_the_step_alone():
    """A resumed run calls set_step with its restored step: the factor does not depend on the steps seen before."""
    resumed = build_margin("arcface", margin_warmup_steps=8)
    assert resumed.margin_factor == 0.0
    resumed.set_step(6)
    walked = build_margin("arcface", margin_warmup_steps=8)
    for step in range(7):
        walked.set_step(step)
    assert resumed.margin_factor == walked.margin_factor == 0.75
    assert build_margin("arcface").margin_factor == 1.0


def test_margin_warmup_refuses_sphereface_and_bad_values():
    with pytest.raises(UserError, match="--margin_warmup_steps does not apply to --head sphereface: its lambda"):
        build_margin("sphereface", margin_warmup_steps=100)
    assert build_margin("sphereface", margin_warmup_steps=0).lambda_ == 1000.0
    with pytest.raises(UserError, match="--margin_warmup_steps must be a whole number"):
        build_margin("arcface", margin_warmup_steps=-3)


def test_scale_auto_is_fixed_adacos():
    from heads import adacos_scale

    assert adacos_scale(200) == pytest.approx(math.sqrt(2) * math.log(199)) and round(adacos_scale(200), 2) == 7.49
    assert round(adacos_scale(85742), 2) == 16.06
    assert build_margin("arcface", num_classes=200, s="auto").s == adacos_scale(200)
    assert build_head("cosface", 8, 85742, s="AUTO").margin.s == adacos_scale(85742)
    # at that scale a sample 45 degrees from its centre and 90 from the others has probability 1/2
    s, others = adacos_scale(200), 199
    assert math.exp(s * math.cos(math.pi / 4)) / (math.exp(s * math.cos(math.pi / 4)) + others) == pytest.approx(0.5)
    with pytest.raises(UserError, match="s=auto needs the number of classes"):
        build_margin("arcface", s="auto")
    with pytest.raises(UserError, match="needs at least 3 classes"):
        build_margin("arcface", num_classes=2, s="auto")
    with pytest.raises(UserError, match=r"must be a positive number, not 'big' \(or auto"):
        build_margin("arcface", num_classes=200, s="big")
