"""Input conventions (inference.conventions): channel order and the one uint8 -> model-input conversion."""
import pytest
import torch

from inference.conventions import INPUT_CONVENTIONS, to_channel_order, to_model_input


def test_to_channel_order():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    assert to_channel_order(images, "RGB") is images
    bgr = to_channel_order(images, "BGR")
    assert torch.equal(bgr[:, 0], images[:, 2]) and torch.equal(bgr[:, 1], images[:, 1])
    assert torch.equal(bgr[:, 2], images[:, 0]) and torch.equal(to_channel_order(bgr, "BGR"), images)
    with pytest.raises(ValueError):
        to_channel_order(images, "bgr")


def test_to_model_input_follows_the_conventions():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    ours = to_model_input(images)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, (images.float() / 255 - 0.5) / 0.5)
    bgr = to_model_input(images, conventions={**INPUT_CONVENTIONS, "channel_order": "BGR", "mean": 0.4, "std": 0.2})
    torch.testing.assert_close(bgr, (images.flip(1).float() / 255 - 0.4) / 0.2)
