import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.prepare_data import main
from data.recordio import RecordReader, class_label
from data.valsets import load_valset, write_bin
from tests.helpers import interrupt_at_call, jpeg, write_emore

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "data/prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def emore(tmp_path):
    folder = write_emore(tmp_path / "emore", num_classes=3, per_class=3)
    write_bin(folder / "lfw.bin", [jpeg(100 + i) for i in range(8)], [True, False, True, False])
    write_bin(folder / "cfp_fp.bin", [jpeg(200 + i) for i in range(4)], [True, False])
    return folder


def test_prepare_everything(emore, capsys):
    assert main(["--source", str(emore), "--workers", "1", "--unpack"]) == 0
    meta = json.loads((emore / "meta.json").read_text())
    assert meta["num_images"] == 9 and meta["num_classes"] == 3 and meta["image_size"] == [112, 112]
    assert meta["label_style"] == "emore" and set(meta["source_files"]) == {"train.rec", "train.idx", "property"}
    images, issame = load_valset(emore, "lfw")
    assert images.shape == (8, 3, 112, 112) and issame.tolist() == [True, False, True, False]
    assert load_valset(emore, "cfp_fp")[0].shape == (4, 3, 112, 112)
    reader = RecordReader(emore / "train.rec")
    for key in range(1, 10):  # unpacked files hold the stored bytes, unchanged, under their class
        header, data = reader.read_unpacked(key)
        assert (emore / "imgs" / str(int(class_label(header))) / f"{key}.jpg").read_bytes() == bytes(data)
    assert len(list((emore / "imgs").rglob("*.jpg"))) == 9


def test_rerun_skips_complete_steps(emore, capsys):
    main(["--source", str(emore), "--workers", "1", "--unpack"])
    stamps = {p: p.stat().st_mtime_ns for p in emore.rglob("*") if p.is_file()}
    capsys.readouterr()
    main(["--source", str(emore), "--workers", "1", "--unpack"])
    out = capsys.readouterr().out
    assert "up to date" in out and "lfw already converted" in out and "already complete" in out
    assert {p: p.stat().st_mtime_ns for p in emore.rglob("*") if p.is_file()} == stamps


def test_out_folder_and_parallel_workers(emore, tmp_path):
    main(["--source", str(emore), "--out", str(tmp_path / "one"), "--workers", "1", "--unpack"])
    main(["--source", str(emore), "--out", str(tmp_path / "two"), "--workers", "2", "--unpack"])
    for name in ("meta.json", "lfw/images.npy", "cfp_fp/issame.npy", "imgs/2/9.jpg"):
        one, two = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        assert one == two, name
    assert not (emore / "meta.json").exists()


@pytest.mark.parametrize("name, style, classes, images", [
    ("emore", "emore", 3, 8), ("array_label", "array", 4, 7), ("im2rec", "im2rec", None, 5), ("split", "im2rec", None, 5)])
def test_prepare_mxnet_fixtures(name, style, classes, images, tmp_path):
    main(["--source", str(FIXTURES / name), "--out", str(tmp_path), "--workers", "1"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["label_style"] == style and meta["num_images"] == images
    records = json.loads((FIXTURES / name / "manifest.json").read_text())["records"]
    labels = [r["label"] if isinstance(r["label"], float) else r["label"][0] for r in records if r["img_len"]]
    assert meta["num_classes"] == (classes if classes is not None else int(max(labels)) + 1)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing damaged

def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert "usage:" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_missing_source(tmp_path):
    assert_user_error(run_cli("--source", tmp_path / "nowhere"), "nowhere: folder not found")
    (tmp_path / "train.rec").write_bytes(b"")
    assert_user_error(run_cli("--source", tmp_path), "train.idx: file not found")


def test_bad_flags():
    assert_user_error(run_cli("--workers", "0"), "--workers must be >= 1")
    assert_user_error(run_cli("--bogus"), "unrecognized arguments: --bogus")


def corrupt(path: Path, offset: int, value: bytes):
    data = bytearray(path.read_bytes())
    data[offset:offset + len(value)] = value
    path.write_bytes(bytes(data))


def offset_of(folder, key):
    return RecordReader(folder / "train.rec").offset_of(key)


def test_bad_magic_keeps_meta(emore):
    assert run_cli("--source", emore, "--workers", "1").returncode == 0
    meta_before = (emore / "meta.json").read_bytes()
    corrupt(emore / "train.rec", offset_of(emore, 4), b"\x00\x00\x00\x00")
    assert_user_error(run_cli("--source", emore, "--workers", "1"), "train.rec: record key 4", "bad magic")
    assert (emore / "meta.json").read_bytes() == meta_before
    assert not list(emore.glob(".*.tmp"))


def test_truncated_rec(emore):
    data = (emore / "train.rec").read_bytes()
    (emore / "train.rec").write_bytes(data[:offset_of(emore, 7) + 50])
    assert_user_error(run_cli("--source", emore), "record key 7", "truncated")


def test_idx_offset_past_end(emore):
    lines = (emore / "train.idx").read_text().splitlines()
    lines[5] = "5\t99999999"
    (emore / "train.idx").write_text("\n".join(lines) + "\n")
    assert_user_error(run_cli("--source", emore), "record key 5 at offset 99999999")


def test_label_out_of_range(emore):
    (emore / "property").write_text("2,112,112")
    assert_user_error(run_cli("--source", emore), "record key 7: label 2 outside [0, 2)", "property")


def test_corrupt_jpeg(tmp_path):
    # a JPEG whose headers are garbage: OpenCV cannot decode it
    folder = write_emore(tmp_path / "bad", image=lambda key: jpeg(key)[:2] + b"\x00" * 30 + jpeg(key)[32:]
                         if key == 5 else jpeg(key))
    assert_user_error(run_cli("--source", folder), "record key 5", "corrupt image data")
    # the structural check alone does not decode, so --skip_decode_check lets it through
    assert run_cli("--source", folder, "--skip_decode_check").returncode == 0


def test_truncated_jpeg(tmp_path):
    # OpenCV decodes a truncated JPEG with only a warning; the missing end marker must catch it
    folder = write_emore(tmp_path / "trunc", image=lambda key: jpeg(key)[:400] if key == 5 else jpeg(key))
    assert_user_error(run_cli("--source", folder, "--skip_decode_check"), "record key 5", "truncated JPEG")


def test_not_an_image(tmp_path):
    folder = write_emore(tmp_path / "bad", image=lambda key: b"hello" * 10 if key == 2 else jpeg(key))
    assert_user_error(run_cli("--source", folder, "--skip_decode_check"), "record key 2", "not a JPEG or PNG")


def test_bad_bin_keeps_converted_sets(emore):
    assert run_cli("--source", emore).returncode == 0
    before = (emore / "lfw" / "images.npy").read_bytes()
    (emore / "lfw" / "issame.npy").unlink()  # force lfw to be redone
    (emore / "lfw.bin").write_bytes(b"not a pickle at all")
    assert_user_error(run_cli("--source", emore), "lfw.bin: not a verification .bin pickle")
    assert (emore / "lfw" / "images.npy").read_bytes() == before
    assert np.load(emore / "cfp_fp" / "issame.npy").tolist() == [True, False]


# ---------------------------------------------------------------- --pose

def synthetic_copy(train_data, tmp_path) -> tuple[Path, np.ndarray]:
    """The synthetic training folder without its pose.npy (the renderer's truth, returned)."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(train_data, source)
    truth = np.load(source / "pose.npy")
    (source / "pose.npy").unlink()
    return source, truth


def test_pose_estimates_every_record(train_data, tmp_path, capsys):
    source, truth = synthetic_copy(train_data, tmp_path)
    assert main(["--source", str(source), "--workers", "1", "--pose"]) == 0
    estimated = np.load(source / "pose.npy")
    assert estimated.dtype == np.float32 and estimated.shape == truth.shape
    images = np.isfinite(truth[:, 0])
    assert np.isnan(estimated[~images]).all()  # header and identity records are not images
    found = images & np.isfinite(estimated[:, 0])
    assert found.sum() >= 0.6 * images.sum()  # cartoon faces: O-Net sees ~80% of them as faces
    assert np.corrcoef(truth[found, 0], estimated[found, 0])[0, 1] > 0.8
    turned = found & (np.abs(truth[:, 0]) > 30)
    assert np.mean(np.sign(truth[turned, 0]) == np.sign(estimated[turned, 0])) > 0.95
    assert f"without a face (NaN) -> {source / 'pose.npy'}" in capsys.readouterr().out
    assert main(["--source", str(source), "--workers", "1", "--pose"]) == 0
    assert "already complete" in capsys.readouterr().out and np.array_equal(np.load(source / "pose.npy"), estimated, equal_nan=True)


def test_pose_continues_after_an_interruption(train_data, tmp_path, monkeypatch, capsys):
    import data.prepare_data as prepare

    source, _ = synthetic_copy(train_data, tmp_path)
    monkeypatch.setattr(prepare, "POSE_CHUNK", 16)  # 80 images: 5 chunks
    assert main(["--source", str(source), "--out", str(tmp_path / "whole"), "--workers", "1", "--pose"]) == 0
    whole = np.load(tmp_path / "whole" / "pose.npy")

    real_chunk = interrupt_at_call(monkeypatch, prepare, "_pose_chunk", 3)
    out = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        main(["--source", str(source), "--out", str(out), "--workers", "1", "--pose"])
    assert not (out / "pose.npy").exists() and (out / ".pose.npy.done").read_text() == "2\n"
    monkeypatch.setattr(prepare, "_pose_chunk", real_chunk)
    assert main(["--source", str(source), "--out", str(out), "--workers", "1", "--pose"]) == 0
    assert "continuing after 2 chunks" in capsys.readouterr().out
    assert np.array_equal(np.load(out / "pose.npy"), whole, equal_nan=True)
    assert not (out / ".pose.npy.partial").exists() and not (out / ".pose.npy.done").exists()


def test_pose_file_in_the_pgaml_authors_json_and_as_csv(emore, tmp_path, capsys):
    entries = [{"img_path": "imgs/0/1.jpg", "p_id": 0, "yaw": -35.5, "pitch": 4.0, "landmark_points": [[1, 2]] * 5},
               {"img_path": "imgs/1/5.jpg", "p_id": 1, "yaw": 12.0, "pitch": -3.0, "landmark_points": []},
               {"img_path": "elsewhere/photo.jpg", "p_id": 2, "yaw": 1.0, "pitch": 0.0},
               {"img_path": "imgs/1/6.jpg", "p_id": 1, "yaw": "n/a", "pitch": 0.0}]
    (tmp_path / "poses.json").write_text(json.dumps(entries))
    assert main(["--source", str(emore), "--workers", "1", "--pose_file", str(tmp_path / "poses.json")]) == 0
    pose = np.load(emore / "pose.npy")
    assert pose.shape == (13, 2) and pose[1].tolist() == [-35.5, 4.0] and pose[5].tolist() == [12.0, -3.0]
    assert np.isnan(pose[[0, 2, 3, 4, 6]]).all() and not (emore / "height.npy").exists()
    assert "pose: 2 of 9 images" in capsys.readouterr().out
    skipped = (emore / "pose_skipped.txt").read_text().splitlines()
    assert len(skipped) == 2 and "entry 2: 'elsewhere/photo.jpg'" in skipped[0] and "'n/a' is not a number" in skipped[1]

    (tmp_path / "poses.csv").write_text("key_or_path,yaw,pitch,height\n3,20,5,4.5\nimgs/2/9.jpg,-60,,\n42,1,1,1\n")
    assert main(["--source", str(emore), "--workers", "1", "--pose_file", str(tmp_path / "poses.csv")]) == 0
    pose, height = np.load(emore / "pose.npy"), np.load(emore / "height.npy")
    assert pose[3].tolist() == [20.0, 5.0] and pose[9, 0] == -60.0 and np.isnan(pose[9, 1]) and height[3] == 4.5
    assert np.isnan(height[9]) and "rows skipped" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("3,95\n", "poses.csv:1: yaw 95.0 is outside [-90, 90] degrees"),
    ("3,10,0,-2\n", "poses.csv:1: height -2.0 m is negative"),
    ("77,10\n", "poses.csv: no row matches an image record"),
])
def test_bad_pose_files_are_one_line(emore, tmp_path, text, message):
    (tmp_path / "poses.csv").write_text(text)
    result = run_cli("--source", emore, "--workers", 1, "--pose_file", tmp_path / "poses.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr
    assert not (emore / "pose.npy").exists()


def test_pose_and_pose_file_exclude_each_other(emore, tmp_path):
    result = run_cli("--source", emore, "--pose", "--pose_file", tmp_path / "x.csv")
    assert result.returncode == 2 and "give one of them" in result.stderr


def test_pose_with_the_yunet_detector(train_data, tmp_path, capsys):
    source, truth = synthetic_copy(train_data, tmp_path)
    assert main(["--source", str(source), "--workers", "1", "--pose", "--detector", "yunet"]) == 0
    estimated = np.load(source / "pose.npy")
    found = np.isfinite(truth[:, 0]) & np.isfinite(estimated[:, 0])
    assert found.sum() >= 20 and np.corrcoef(truth[found, 0], estimated[found, 0])[0, 1] > 0.7
