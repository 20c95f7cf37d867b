"""The pure-Python RecordIO reader/writer against files written by real MXNet 1.9.1 (tests/fixtures/mxnet)."""
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from data.images import decode_rgb
from data.recordio import (MAGIC_BYTES, IRHeader, RecordError, RecordReader, RecordWriter, class_label,
                           detect_layout, frame_record, pack, read_property, unpack)

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"
STYLES = {"emore": "emore", "array_label": "array", "im2rec": "im2rec", "split": "im2rec"}


def manifest(name):
    return json.loads((FIXTURES / name / "manifest.json").read_text())


def sha(data):
    return hashlib.sha256(bytes(data)).hexdigest()


@pytest.mark.parametrize("name", sorted(STYLES))
def test_reader_matches_mxnet(name):
    reader = RecordReader(FIXTURES / name / "train.rec")
    records = manifest(name)["records"]
    assert reader.keys.tolist() == [r["key"] for r in records]
    for record in records:
        payload = reader.read(record["key"])
        assert len(payload) == record["payload_len"] and sha(payload) == record["payload_sha256"]
        header, image = unpack(payload)
        assert header.flag == record["flag"] and header.id == record["id"] and header.id2 == record["id2"]
        np.testing.assert_array_equal(np.asarray(header.label, dtype=np.float32), np.float32(record["label"]))
        assert len(image) == record["img_len"] and sha(image) == record["img_sha256"]


@pytest.mark.parametrize("name", sorted(STYLES))
def test_writer_is_byte_identical_to_mxnet(name, tmp_path):
    reader = RecordReader(FIXTURES / name / "train.rec")
    with RecordWriter(tmp_path / "train.rec") as writer:
        for key in reader.keys.tolist():
            writer.write(key, reader.read(key))
    assert (tmp_path / "train.rec").read_bytes() == (FIXTURES / name / "train.rec").read_bytes()
    assert (tmp_path / "train.idx").read_bytes() == (FIXTURES / name / "train.idx").read_bytes()


def test_split_record_parts_follow_dmlc_layout():
    record = manifest("split")["records"][1]
    data = (FIXTURES / "split" / "train.rec").read_bytes()
    for part in record["parts"]:
        magic, lrec = struct.unpack_from("<II", data, part["offset"])
        assert magic == 0xCED7230A
        assert (lrec >> 29, lrec & (2**29 - 1)) == (part["cflag"], part["length"])
    assert [p["cflag"] for p in record["parts"]] == [1, 2, 2, 2, 3]


@pytest.mark.parametrize("name", sorted(STYLES))
def test_layout_detection(name):
    reader = RecordReader(FIXTURES / name / "train.rec")
    layout = detect_layout(reader)
    assert layout.label_style == STYLES[name]
    records = {r["key"]: r for r in manifest(name)["records"]}
    if name == "emore":
        assert layout.image_keys.tolist() == list(range(1, 9))
        assert layout.identity_keys.tolist() == [9, 10, 11]
        for key in layout.identity_keys.tolist():  # each identity's key range holds exactly its class
            header, _ = reader.read_unpacked(key)
            first, end = (int(v) for v in header.label)
            labels = {class_label(reader.read_unpacked(k)[0]) for k in range(first, end)}
            assert labels == {float(key - 9)}
    else:
        assert sorted(layout.image_keys.tolist()) == sorted(records)


def test_image_labels_and_decoding():
    reader = RecordReader(FIXTURES / "array_label" / "train.rec")
    for record in manifest("array_label")["records"]:
        header, image = reader.read_unpacked(record["key"])
        assert class_label(header) == record["label"][0]
        rgb = decode_rgb(image)
        assert list(rgb.shape) == record["decoded_shape_hwc"]
        # the manifest's mean is BGR from MXNet's cv2; ours is RGB
        np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0)[::-1], record["decoded_mean_bgr"], atol=1.0)


def test_property_file():
    assert read_property(FIXTURES / "emore") == (3, (112, 112))
    assert read_property(FIXTURES / "array_label") == (4, (112, 112))
    assert read_property(FIXTURES / "im2rec") is None


def test_pack_unpack_round_trip():
    payload = pack(IRHeader(0, [3.0, 1.0, 7.5], 5, 6), b"jpegbytes")
    header, image = unpack(payload)
    assert header.flag == 3 and header.id == 5 and header.id2 == 6 and bytes(image) == b"jpegbytes"
    np.testing.assert_array_equal(header.label, [3.0, 1.0, 7.5])
    header, image = unpack(pack(IRHeader(9, 4.0, 1, 0), b""))
    assert header.flag == 0 and header.label == 4.0 and bytes(image) == b""


@pytest.mark.parametrize("payload", [b"", b"abc", MAGIC_BYTES, b"1234" + MAGIC_BYTES + MAGIC_BYTES + b"xy",
                                     b"12" + MAGIC_BYTES + b"34"])
def test_framing_round_trip(payload, tmp_path):
    with RecordWriter(tmp_path / "t.rec") as writer:
        writer.write(3, payload)
        writer.write(1, b"after")
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.read(3) == payload and reader.read(1) == b"after"
    assert len(frame_record(payload)) % 4 == 0


def test_writer_leaves_nothing_on_error(tmp_path):
    (tmp_path / "t.rec").write_bytes(b"old")
    with pytest.raises(ValueError):
        with RecordWriter(tmp_path / "t.rec") as writer:
            writer.write(1, b"x")
            writer.write(1, b"duplicate key")
    assert (tmp_path / "t.rec").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.rec"]


# ---------------------------------------------------------------- bad input

def copy_fixture(tmp_path, name="emore"):
    for path in (FIXTURES / name).iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def test_bad_magic_names_key(tmp_path):
    folder = copy_fixture(tmp_path)
    offset = next(r["offset"] for r in manifest("emore")["records"] if r["key"] == 3)
    data = bytearray((folder / "train.rec").read_bytes())
    data[offset] ^= 0xFF
    (folder / "train.rec").write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"train.rec: record key 3 at offset \d+: bad magic"):
        RecordReader(folder / "train.rec").read(3)


def test_truncated_rec(tmp_path):
    folder = copy_fixture(tmp_path)
    data = (folder / "train.rec").read_bytes()
    last = manifest("emore")["records"][8]  # key 8, the last image before the identity records
    (folder / "train.rec").write_bytes(data[:last["offset"] + 100])
    with pytest.raises(RecordError, match="record key 8 .*truncated"):
        RecordReader(folder / "train.rec").read(8)


def test_idx_offset_past_end(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "train.idx").write_text("0\t0\n1\t999999\n")
    with pytest.raises(RecordError, match="record key 1 at offset 999999"):
        RecordReader(folder / "train.rec").read(1)


def test_bad_index_file(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "train.idx").write_text("0\t0\n3\t40\n3\t80\n")
    with pytest.raises(RecordError, match="train.idx: record key 3 appears more than once"):
        RecordReader(folder / "train.rec")
    (folder / "train.idx").write_text("0\tzero\n")
    with pytest.raises(RecordError, match="train.idx: not an index file"):
        RecordReader(folder / "train.rec")
    (folder / "train.idx").unlink()
    with pytest.raises(RecordError, match="train.idx: index file not found"):
        RecordReader(folder / "train.rec")


def test_unknown_key(tmp_path):
    with pytest.raises(RecordError, match="no record with key 42"):
        RecordReader(FIXTURES / "emore" / "train.rec").read(42)


def test_bad_property(tmp_path):
    (tmp_path / "property").write_text("many,112")
    with pytest.raises(RecordError, match="property: expected 'num_classes,height,width'"):
        read_property(tmp_path)


def test_reader_survives_pickling_and_fork(tmp_path):
    import multiprocessing
    import pickle
    reader = RecordReader(FIXTURES / "emore" / "train.rec")
    reader.read(1)  # maps the file in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(2) == reader.read(2)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_read_len, [(reader, k) for k in (1, 2, 3)]) == [len(reader.read(k)) for k in (1, 2, 3)]


def _read_len(job):
    reader, key = job
    return len(reader.read(key))
