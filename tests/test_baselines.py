"""evaluation.baselines: the raw-pixel matcher and the untrained network, scored like any model."""
from __future__ import annotations

import torch

from evaluation.baselines import RawPixels, untrained


def test_raw_pixels_are_the_grey_image_minus_its_mean_normalised():
    x = torch.rand(3, 3, 8, 8)
    grey = x.mean(1).flatten(1)
    expected = (grey - grey.mean(1, keepdim=True))
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(RawPixels()(x), expected, atol=1e-6)
    assert torch.allclose(RawPixels()(x * 2 + 1), expected, atol=1e-5)  # blind to brightness and contrast


def test_untrained_network_is_the_seeds_start_in_eval_mode():
    a, b, c = untrained("mobilefacenet", 0), untrained("mobilefacenet", 0), untrained("mobilefacenet", 1)
    assert not a.training
    weights = [dict(n.state_dict()) for n in (a, b, c)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0] if weights[0][k].is_floating_point())
    state = torch.random.get_rng_state()
    untrained("mobilefacenet", 5)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is left alone
