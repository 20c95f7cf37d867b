import os
import pickle
import struct

import numpy as np
import pytest

from data.images import decode_rgb
from data.valsets import ValsetError, convert_bin, is_converted, load_valset, load_valset_pose, read_bin, write_bin
from tests.helpers import jpeg


def make_bin(path, pairs=3):
    images = [jpeg(i) for i in range(2 * pairs)]
    issame = [i % 2 == 0 for i in range(pairs)]
    write_bin(path, images, issame)
    return images, issame


def test_round_trip_and_conversion(tmp_path):
    images, issame = make_bin(tmp_path / "lfw.bin")
    read_images, read_issame = read_bin(tmp_path / "lfw.bin")
    assert read_images == images and read_issame.tolist() == issame
    convert_bin(tmp_path / "lfw.bin", tmp_path / "out")
    array, same = load_valset(tmp_path / "out", "lfw")
    assert isinstance(array, np.memmap) and array.dtype == np.uint8 and array.shape == (6, 3, 112, 112)
    assert same.dtype == np.bool_ and same.tolist() == issame
    for i, data in enumerate(images):  # RGB, CHW, exactly the decoded pixels
        np.testing.assert_array_equal(array[i], decode_rgb(data).transpose(2, 0, 1))
    assert is_converted(tmp_path / "out", "lfw")
    assert load_valset_pose(tmp_path / "out", "lfw") is None


def test_parallel_conversion_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr("data.valsets.CHUNK", 4)
    make_bin(tmp_path / "cfp_fp.bin", pairs=9)
    convert_bin(tmp_path / "cfp_fp.bin", tmp_path / "one", workers=1)
    convert_bin(tmp_path / "cfp_fp.bin", tmp_path / "two", workers=2)
    assert (tmp_path / "one/cfp_fp/images.npy").read_bytes() == (tmp_path / "two/cfp_fp/images.npy").read_bytes()


def test_pose_sidecar_is_converted(tmp_path):
    make_bin(tmp_path / "lfw.bin")
    pose = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp_path / "lfw.pose.npy", pose)
    convert_bin(tmp_path / "lfw.bin", tmp_path)
    np.testing.assert_array_equal(load_valset_pose(tmp_path, "lfw"), pose)
    np.save(tmp_path / "lfw.pose.npy", pose[:4])
    with pytest.raises(ValsetError, match=r"lfw.pose.npy: shape \(4, 2\), expected \(6, 2\)"):
        convert_bin(tmp_path / "lfw.bin", tmp_path)


def py2_pickle(images, issame):
    """The bytes Python 2's cPickle (protocol 2) writes for (list of str, list of bool)."""
    out = [b"\x80\x02", b"](", *(b"T" + struct.pack("<i", len(b)) + b for b in images), b"e", b"](",
           *(b"\x88" if s else b"\x89" for s in issame), b"e", b"\x86."]
    return b"".join(out)


def test_python2_pickle(tmp_path):
    images = [jpeg(i) for i in range(4)]
    (tmp_path / "agedb_30.bin").write_bytes(py2_pickle(images, [True, False]))
    read_images, issame = read_bin(tmp_path / "agedb_30.bin")
    assert read_images == images and issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [0, 2, 3, 5])
def test_python3_protocols_and_numpy_bools(tmp_path, protocol):
    images = [jpeg(i) for i in range(4)]
    (tmp_path / "x.bin").write_bytes(pickle.dumps((images, [np.bool_(True), np.bool_(False)]), protocol=protocol))
    read_images, issame = read_bin(tmp_path / "x.bin")
    assert read_images == images and issame.tolist() == [True, False]


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Exploit(marker)], [True])))
    with pytest.raises(ValsetError, match=r"evil.bin: refused to unpickle: global '(posix|os)\.system'"):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_numpy_array_reconstruction_is_refused(tmp_path):
    (tmp_path / "arr.bin").write_bytes(pickle.dumps(([b"a", b"b"], np.array([True]))))
    with pytest.raises(ValsetError, match="is not allowed"):
        read_bin(tmp_path / "arr.bin")


@pytest.mark.parametrize("content, message", [
    (b"this is not a pickle", "not a verification .bin pickle"),
    (pickle.dumps({"a": 1})[:-1], "not a verification .bin pickle"),
    (pickle.dumps(([b"a", b"b"],)), r"expected a pickled \(bins, issame_list\) pair"),
    (pickle.dumps((["text", "text"], [True])), "image 0 is a str"),
    (pickle.dumps(([b"a", b"b"], [2])), r"issame_list\[0\] is 2"),
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "odd number of images"),
    (pickle.dumps(([b"a", b"b", b"c", b"d"], [True])), "4 images but 1 pairs"),
])
def test_malformed_bins(tmp_path, content, message):
    (tmp_path / "bad.bin").write_bytes(content)
    with pytest.raises(ValsetError, match=message):
        read_bin(tmp_path / "bad.bin")


def test_corrupt_image_keeps_earlier_output(tmp_path):
    make_bin(tmp_path / "lfw.bin")
    convert_bin(tmp_path / "lfw.bin", tmp_path / "out")
    before = (tmp_path / "out/lfw/images.npy").read_bytes()
    images = [jpeg(i) for i in range(6)]
    images[3] = images[3][: len(images[3]) // 2]  # truncated JPEG
    write_bin(tmp_path / "lfw.bin", images, [True, False, True])
    with pytest.raises(ValsetError, match="lfw.bin: image 3: truncated JPEG"):
        convert_bin(tmp_path / "lfw.bin", tmp_path / "out")
    assert (tmp_path / "out/lfw/images.npy").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "out/lfw")) == ["images.npy", "issame.npy"]


def test_wrong_image_size(tmp_path):
    write_bin(tmp_path / "small.bin", [jpeg(0, 96), jpeg(1, 96)], [True])
    with pytest.raises(ValsetError, match="small.bin: image 0: image is 96x96, expected 112x112"):
        convert_bin(tmp_path / "small.bin", tmp_path)


def test_missing_bin(tmp_path):
    with pytest.raises(ValsetError, match="nope.bin: file not found"):
        read_bin(tmp_path / "nope.bin")
