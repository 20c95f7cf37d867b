import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from config import AugmentConfig
from data.datasets import (FolderDataset, RecordDataset, augment, build_loader, collate_batch, open_dataset,
                           sample_rng)
from data.images import decode_rgb
from inference.conventions import to_model_input
from data.prepare_data import main as prepare
from data.recordio import RecordError, RecordReader
from tests.helpers import jpeg, write_emore
from utils import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"
NO_AUGMENT = None


@pytest.fixture
def emore(tmp_path):
    folder = write_emore(tmp_path / "emore", num_classes=3, per_class=4)
    num_keys = 1 + 12 + 3
    pose = np.full((num_keys, 2), np.nan, dtype=np.float32)
    pose[1:13, 0] = np.linspace(-90, 90, 12)
    pose[1:13, 1] = 5.0
    np.save(folder / "pose.npy", pose)
    height = np.full(num_keys, np.nan, dtype=np.float32)
    height[1:13] = np.arange(12)
    np.save(folder / "height.npy", height)
    return folder


def test_record_dataset_items(emore):
    dataset = RecordDataset(emore, NO_AUGMENT)
    assert len(dataset) == 12 and dataset.num_classes == 3
    reader = RecordReader(emore / "train.rec")
    for index in range(12):
        image, label, side = dataset[index]
        key = index + 1
        assert image.dtype == np.uint8 and image.shape == (3, 112, 112)
        np.testing.assert_array_equal(image, decode_rgb(reader.read_unpacked(key)[1]).transpose(2, 0, 1))
        assert label == index // 4
        assert side["yaw"] == pytest.approx(-90 + 180 * index / 11) and side["pitch"] == 5.0
        assert side["height"] == index and side["yaw"].dtype == np.float32


@pytest.mark.parametrize("name", ["emore", "array_label", "im2rec", "split"])
def test_record_dataset_on_mxnet_fixtures(name):
    records = json.loads((FIXTURES / name / "manifest.json").read_text())["records"]
    images = [r for r in records if r["img_len"]]
    dataset = RecordDataset(FIXTURES / name, NO_AUGMENT)
    assert sorted(dataset.keys.tolist()) == sorted(r["key"] for r in images)
    expected = {r["key"]: r for r in images}
    for index in range(len(dataset)):
        image, label, side = dataset[index]
        record = expected[int(dataset.keys[index])]
        assert label == (record["label"] if isinstance(record["label"], float) else record["label"][0])
        assert list(image.shape) == [3, *record["decoded_shape_hwc"][:2]] and side == {}
    assert dataset.num_classes == 1 + max(label for _, label, _ in (dataset[i] for i in range(len(dataset))))


def test_flip_negates_yaw(emore):
    plain = RecordDataset(emore, NO_AUGMENT)
    flipped = RecordDataset(emore, AugmentConfig(flip_prob=1.0))
    image, _, side = plain[2]
    image_f, _, side_f = flipped[2]
    np.testing.assert_array_equal(image_f, image[:, :, ::-1])
    assert side_f["yaw"] == -side["yaw"] and side_f["pitch"] == side["pitch"]


def test_augmentation_depends_on_seed_epoch_index_only(emore):
    cfg = AugmentConfig(flip_prob=0.5, downscale_prob=0.5, blur_prob=0.5, jpeg_prob=0.5)
    one, two = RecordDataset(emore, cfg, seed=3), RecordDataset(emore, cfg, seed=3)
    for index in range(12):
        np.testing.assert_array_equal(one[index][0], two[index][0])
    draws = [[sample_rng(3, epoch, i).random() for i in range(12)] for epoch in (0, 1)]
    assert draws[0] != draws[1]
    one.set_epoch(1)
    assert any(not np.array_equal(one[i][0], two[i][0]) for i in range(12))


def test_degradation_removes_detail():
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)  # all high frequency
    cfg = AugmentConfig(flip_prob=0.0, downscale_prob=1.0, downscale_min=0.25, blur_prob=1.0, jpeg_prob=1.0)
    out = augment(rgb, {}, sample_rng(0, 0, 0), cfg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    roughness = lambda a: np.abs(np.diff(a.astype(np.int16), axis=1)).mean()
    assert roughness(out) < 0.5 * roughness(rgb)


def test_bad_augment_config():
    with pytest.raises(UserError, match="augment.blur_prob=1.5 must be a probability"):
        AugmentConfig(blur_prob=1.5)


def test_folder_dataset_matches_records(emore):
    prepare(["--source", str(emore), "--workers", "1", "--unpack"])
    records, folder = RecordDataset(emore, NO_AUGMENT), open_dataset(emore / "imgs", NO_AUGMENT)
    assert isinstance(folder, FolderDataset) and len(folder) == len(records) and folder.num_classes == 3
    by_key = {int(path.stem): i for i, path in enumerate(folder.paths)}
    for index, key in enumerate(records.keys.tolist()):
        image, label, side = records[index]
        image_f, label_f, side_f = folder[by_key[key]]
        np.testing.assert_array_equal(image, image_f)
        assert label == label_f and side == side_f


def test_folder_dataset_with_named_classes(tmp_path):
    for name, seed in (("bob", 1), ("alice", 2), ("alice", 3)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / f"{seed}.jpg").write_bytes(jpeg(seed))
    dataset = FolderDataset(tmp_path, NO_AUGMENT)
    assert [dataset[i][1] for i in range(3)] == [0, 0, 1] and dataset.num_classes == 2
    assert dataset[0][2] == {}


def test_open_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="missing: the training data folder does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="neither a RecordIO folder"):
        open_dataset(tmp_path / "a_file")
    with pytest.raises(UserError, match="no images found"):
        open_dataset(tmp_path)


def test_corrupt_image_names_record(tmp_path):
    folder = write_emore(tmp_path / "bad", image=lambda key: jpeg(key)[:2] + b"\0" * 30 + jpeg(key)[32:]
                         if key == 3 else jpeg(key))
    dataset = RecordDataset(folder, NO_AUGMENT)
    with pytest.raises(RecordError, match=r"train.rec: record key 3: corrupt image data"):
        dataset[2]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches(emore, workers):
    dataset = RecordDataset(emore, AugmentConfig(), seed=1)
    batches = list(build_loader(dataset, batch_size=5, num_workers=workers, seed=7))
    assert len(batches) == 2  # drop_last
    images, labels, side = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 112, 112)
    assert labels.dtype == torch.int64 and side["yaw"].dtype == torch.float32 and side["height"].shape == (5,)
    flips = [not np.array_equal(dataset[i][0], RecordDataset(emore)[i][0]) for i in range(12)]
    assert 0 < sum(flips) < 12  # flip_prob 0.5: some flipped, some not
    reference = list(build_loader(dataset, batch_size=5, num_workers=0, seed=7))
    for (a, la, sa), (b, lb, sb) in zip(batches, reference):  # same order and augmentation with any worker count
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(sa["yaw"], sb["yaw"])


def test_collate_batch_copies_flipped_views(emore):
    dataset = RecordDataset(emore, AugmentConfig(flip_prob=1.0))
    items = [dataset[i] for i in range(4)]
    images, labels, side = collate_batch(items)
    assert images.dtype == torch.uint8 and images.is_contiguous() and images.shape == (4, 3, 112, 112)
    for i, (image, label, item_side) in enumerate(items):
        np.testing.assert_array_equal(images[i].numpy(), image)
        assert labels[i] == label and side["yaw"][i] == item_side["yaw"]


def test_loader_uses_distributed_sampler(emore):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    try:
        loader = build_loader(RecordDataset(emore, NO_AUGMENT), batch_size=4)
        assert isinstance(loader.sampler, DistributedSampler)
    finally:
        dist.destroy_process_group()


def test_model_input_normalisation():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    out = to_model_input(images, channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [-1.0, 1.0, (51 / 255 - 0.5) / 0.5], rtol=1e-6)


def test_jpeg_degradation_keeps_colours():
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30  # red, a little blue
    out = augment(rgb, {}, sample_rng(0, 0, 0), AugmentConfig(flip_prob=1.0, jpeg_prob=1.0, jpeg_quality_min=40))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [200, 0, 30], atol=4)


def test_resumable_sampler_splits_global_batches_and_resumes_mid_epoch():
    from data.datasets import ResumableSampler
    whole = ResumableSampler(50, batch_size=4, seed=1)
    assert whole.steps_per_epoch == 12 and len(whole) == 48
    order = list(whole)
    assert sorted(order) == sorted(set(order)) and len(order) == 48
    np.testing.assert_array_equal(order, whole.permutation(0)[:48])
    ranks = [ResumableSampler(50, batch_size=2, rank=r, world_size=2, seed=1) for r in range(2)]
    per_rank = [list(s) for s in ranks]
    assert ranks[0].steps_per_epoch == 12
    for step in range(12):  # each global batch of 4 is the single-process batch, split in two
        assert per_rank[0][2 * step:2 * step + 2] + per_rank[1][2 * step:2 * step + 2] == order[4 * step:4 * step + 4]
    whole.set_position(0, samples_done=20)
    assert list(whole) == order[20:] and len(whole) == 28
    whole.set_position(1)
    second_epoch = list(whole)
    assert second_epoch != order and len(set(second_epoch)) == 48
    with pytest.raises(UserError, match="do not fill one global batch of 64"):
        ResumableSampler(50, batch_size=32, world_size=2)
