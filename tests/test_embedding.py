import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.conventions import INPUT_CONVENTIONS
from inference.embedding import embed_images


def conventions(order: str = "RGB", mean: float = 0.5, std: float = 0.5) -> dict:
    return {**INPUT_CONVENTIONS, "channel_order": order, "mean": mean, "std": std}


class TinyNet(torch.nn.Module):
    """Not flip-invariant and not channel-symmetric, so the tests can see both."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3 * 8 * 8, 16)

    def forward(self, x):
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def reference(model, images, flip, bgr, mean=0.5, std=0.5):
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if bgr:
        x = x.flip(1)
    x = (x - mean) / std
    with torch.no_grad():
        emb = model(x) + (model(x.flip(3)) if flip else 0)
    return F.normalize(emb, dim=1).numpy()


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_batches_flip_and_channel_order(tmp_path, flip, order):
    images = np.random.default_rng(0).integers(0, 256, (13, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    stored = np.load(tmp_path / "images.npy", mmap_mode="r")  # streamed from a memmap, as eval does
    model = TinyNet().train()
    seen = []
    out = embed_images(model, stored, batch_size=4, flip=flip, conventions=conventions(order), progress=seen.append)
    assert out.dtype == np.float32 and out.shape == (13, 16) and seen == [4, 4, 4, 1]
    np.testing.assert_allclose(out, reference(model, images, flip, order == "BGR"), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert model.training  # mode restored


def test_flip_and_order_change_the_result():
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    model = TinyNet()
    plain = embed_images(model, images, flip=False)
    assert not np.allclose(plain, embed_images(model, images, flip=True))
    assert not np.allclose(plain, embed_images(model, images, flip=False, conventions=conventions("BGR")))


def test_bad_inputs():
    with pytest.raises(ValueError, match="expected uint8 images"):
        embed_images(TinyNet(), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="channel order"):
        embed_images(TinyNet(), np.zeros((2, 3, 8, 8), np.uint8), conventions=conventions("GBR"))


def test_bf16_autocast_close_to_fp32():
    images = np.random.default_rng(2).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    model = TinyNet()
    fp32 = embed_images(model, images)
    bf16 = embed_images(model, images, amp_dtype=torch.bfloat16)
    assert np.abs(fp32 - bf16).max() < 0.05


def test_mean_and_std_come_from_the_conventions():
    """A model trained on (x/255 - 0.4) / 0.25 (another framework's choice) is fed exactly that."""
    images = np.random.default_rng(3).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    model = TinyNet()
    out = embed_images(model, images, flip=False, conventions=conventions("RGB", 0.4, 0.25))
    np.testing.assert_allclose(out, reference(model, images, False, False, 0.4, 0.25), atol=1e-6)
    assert not np.allclose(out, embed_images(model, images, flip=False))


def test_on_a_cpu_the_model_sees_small_channels_last_chunks():
    """What a CPU forward gets (at most CPU_FORWARD_BATCH images, channels_last: several times faster) gives
    the embeddings the whole batch would, in its order."""
    from model import build_backbone
    from inference.embedding import CPU_FORWARD_BATCH

    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", embedding_size=32)
    images = np.random.default_rng(4).integers(0, 256, (CPU_FORWARD_BATCH + 5, 3, 112, 112), dtype=np.uint8)
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(
        (len(args[0]), args[0].is_contiguous(memory_format=torch.channels_last))))
    out = embed_images(model, images, batch_size=64, flip=False)
    hook.remove()
    assert seen == [(CPU_FORWARD_BATCH, True), (5, True)]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    with torch.no_grad():
        whole = F.normalize(model.eval()((x - 0.5) / 0.5), dim=1).numpy()  # one NCHW forward of the 21
    np.testing.assert_allclose(out, whole, atol=1e-5)
