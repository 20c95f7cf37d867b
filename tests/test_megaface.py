"""MegaFace challenge 1: the official layouts and formats (evaluation/protocols/megaface.py) and megaface.py end to end
on a tiny generated FaceScrub / MegaFace set with JSON landmarks."""
import json
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import megaface
from evaluation.protocols.megaface import (
    decode_matrix,
    distractor_sets,
    encode_matrix,
    facescrub_noise_key,
    feature_path,
    megaface_noise_key,
    probe_set,
    read_face_json,
    read_feature,
    read_matrix,
    read_noise_list,
    write_matrix,
)
from data.images import decode_rgb, encode_jpeg, encode_png
from faces.alignment import ARCFACE_TEMPLATE_112, transform_points
from identification import evaluate_open_set
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.conftest import ROOT
from utils import UserError, run_cli

IDENTITIES = {"Alice_Ames": 4, "Bob_Bell": 3, "Carol_Cole": 3}
DISTRACTORS = [f"{a}/{a}{b}@N00/{a}{b}{n}_0.jpg" for a in ("101", "202") for b in ("1", "2") for n in range(3)]
NOISY_PROBE = "Bob_Bell/Bob_Bell_3.png"
NOISY_DISTRACTOR = DISTRACTORS[4]


# ----------------------------------------------------------------------------- generated photos

def face_photo(rng, colour, size=(240, 200)):
    """A drawn face (ellipse, eyes, nose, mouth) at a random similarity pose; returns the photo and
    its five landmarks in template order."""
    angle, scale = np.deg2rad(rng.uniform(-20, 20)), rng.uniform(1.1, 1.6)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.hstack([rotation, rng.uniform(20, 50, size=(2, 1))])
    landmarks = transform_points(matrix, ARCFACE_TEMPLATE_112)
    photo = np.full((*size, 3), 90, np.uint8)
    centre = transform_points(matrix, [[56, 64]])[0]
    cv2.ellipse(photo, (int(centre[0]), int(centre[1])), (int(45 * scale), int(60 * scale)),
                float(np.degrees(angle)), 0, 360, colour, -1)
    for x, y in landmarks[:3]:
        cv2.circle(photo, (int(x), int(y)), 4, (20, 20, 20), -1)
    cv2.line(photo, tuple(landmarks[3].astype(int)), tuple(landmarks[4].astype(int)), (150, 30, 30), 3)
    return photo, landmarks


def face_json(landmarks, with_landmarks=True):
    x0, y0 = landmarks.min(axis=0) - 25
    x1, y1 = landmarks.max(axis=0) + 25
    data = {"bounding_box": {"x": float(x0), "y": float(y0), "width": float(x1 - x0), "height": float(y1 - y0)}}
    if with_landmarks:  # MegaFace's keys: "1" image-left eye, "0" image-right eye, "2" nose
        data["landmarks"] = {key: {"x": float(landmarks[i, 0]), "y": float(landmarks[i, 1])}
                             for key, i in (("0", 1), ("1", 0), ("2", 2))}
    return json.dumps(data)


def write_layout(root):
    rng = np.random.default_rng(0)
    probes, ids = [], []
    for name, count in IDENTITIES.items():
        colour = tuple(int(c) for c in rng.integers(100, 255, 3))
        for n in range(1, count + 1):
            path = root / "facescrub" / name / f"{name}_{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo, landmarks = face_photo(rng, colour)
            path.write_bytes(encode_png(photo))
            path.with_name(path.name + ".json").write_text(face_json(landmarks))
            probes.append(f"{name}/{name}_{n}.png")
            ids.append(name.replace("_", " "))
    for index, relative in enumerate(DISTRACTORS):
        path = root / "FlickrFinal2" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        photo, landmarks = face_photo(rng, tuple(int(c) for c in rng.integers(0, 255, 3)))
        path.write_bytes(encode_jpeg(photo))
        if index != 0:  # distractor 0 has no JSON; distractor 1 only a face box
            path.with_name(path.name + ".json").write_text(face_json(landmarks, with_landmarks=index != 1))
    lists = root / "templatelists"
    lists.mkdir()
    (lists / "facescrub_features_list.json").write_text(json.dumps({"path": probes, "id": ids}))
    for size in (5, 12):
        (lists / f"megaface_features_list.json_{size}_1").write_text(json.dumps({"path": DISTRACTORS[:size]}))
    (root / "facescrub_noises.txt").write_text("# FaceScrub noise\n# name\nBob_Bell_3.png\n")
    (root / "megaface_noises.txt").write_text(f"# MegaFace noise\n1\t{NOISY_DISTRACTOR}\n")
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = write_layout(tmp_path_factory.mktemp("megaface"))
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), root / "model_mobilefacenet.pth")
    return root


def run(*args):
    """megaface.main in this process: (exit status, stdout + stderr) as run_cli gives them."""
    try:
        run_cli(lambda: megaface.main([str(a) for a in args]))
    except SystemExit as done:
        return done.code
    raise AssertionError("run_cli always exits")


def shown_lines(raw: bytes) -> list[str]:
    """What a terminal shows of stderr: each line's text after its last carriage return (a transient
    progress bar erases itself with one), blank lines dropped. Read as bytes: text mode would turn
    every carriage return into a newline."""
    return [shown for line in raw.decode().split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]


def assert_one_error_line(code, capsysbinary, *fragments):
    err = shown_lines(capsysbinary.readouterr().err)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


# ----------------------------------------------------------------------------- formats

def test_matrix_bytes_match_the_devkit_layout(tmp_path):
    feature = np.linspace(-1, 1, 512, dtype=np.float32)
    data = encode_matrix(feature)
    # insightface's gen_megaface.py: struct.pack('4i', len(feature), 1, 4, 5) + the float32 values
    assert data == struct.pack("<4i", 512, 1, 4, 5) + struct.pack("<512f", *feature)
    write_matrix(tmp_path / "a.jpg_x.bin", feature)
    assert np.array_equal(read_feature(tmp_path / "a.jpg_x.bin"), feature)
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert encode_matrix(matrix)[:16] == struct.pack("<4i", 2, 3, 24, 6)
    assert np.array_equal(decode_matrix(encode_matrix(matrix)), matrix)
    assert read_matrix(tmp_path / "a.jpg_x.bin").shape == (512, 1)


@pytest.mark.parametrize("data, message", [
    (b"\x00" * 10, "shorter than the 16-byte header"),
    (struct.pack("<4i", 4, 1, 4, 0) + bytes(16), "unsupported matrix type 0"),
    (struct.pack("<4i", 4, 1, 8, 5) + bytes(32), "corrupt matrix header"),
    (struct.pack("<4i", 4, 1, 4, 5) + bytes(15), "header says 4x1 (32 bytes), file has 31 bytes"),
])
def test_corrupt_matrices(tmp_path, data, message):
    (tmp_path / "bad.bin").write_bytes(data)
    with pytest.raises(UserError, match="bad.bin: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        read_feature(tmp_path / "bad.bin")


def test_face_json_and_lists(layout):
    meta = read_face_json(layout / "facescrub" / "Alice_Ames" / "Alice_Ames_1.png.json")
    raw = json.loads((layout / "facescrub" / "Alice_Ames" / "Alice_Ames_1.png.json").read_text())["landmarks"]
    assert meta.landmarks.tolist() == [[raw[k]["x"], raw[k]["y"]] for k in ("1", "0", "2")]
    assert meta.template_indices.tolist() == [0, 1, 2] and meta.box[2] > 0
    assert meta.landmarks[0, 0] < meta.landmarks[1, 0]  # key "1" is the eye on the image's left
    probes = probe_set(layout / "facescrub", layout / "templatelists" / "facescrub_features_list.json")
    assert probes.paths[0] == "Alice_Ames/Alice_Ames_1.png" and probes.identities[0] == "Alice Ames"
    assert probes.labels().tolist() == [0] * 4 + [1] * 3 + [2] * 3
    walked = probe_set(layout / "facescrub")
    assert walked.paths == probes.paths and walked.identities[4] == "Bob_Bell"
    sets = distractor_sets(layout / "FlickrFinal2", layout / "templatelists")
    assert sets.sizes == (5, 12) and sorted(sets.paths) == sorted(DISTRACTORS)
    assert sets.membership.sum(axis=0).tolist() == [5, 12]
    assert all(sets.membership[sets.paths.index(p), 0] for p in DISTRACTORS[:5])
    shuffled = distractor_sets(layout / "FlickrFinal2", sizes=(4, 100))
    assert shuffled.sizes == (4, 12) and sorted(shuffled.paths) == sorted(DISTRACTORS)
    assert shuffled.membership[:4, 0].all() and not shuffled.membership[4:, 0].any()
    with pytest.raises(UserError, match="megaface_features_list.json_100_1: distractor list not found .*: 5, 12"):
        distractor_sets(layout / "FlickrFinal2", layout / "templatelists", sizes=(100,))


def test_noise_lists(layout):
    assert read_noise_list(layout / "megaface_noises.txt") == [NOISY_DISTRACTOR]
    assert [facescrub_noise_key(e) for e in read_noise_list(layout / "facescrub_noises.txt")] == ["Bob_Bell_3"]
    assert facescrub_noise_key("Bob Bell/Bob Bell_3.jpg") == facescrub_noise_key(NOISY_PROBE)
    assert megaface_noise_key("/data/FlickrFinal2/" + NOISY_DISTRACTOR) == NOISY_DISTRACTOR


def test_clean_probe_features():
    features = np.eye(4, 6, dtype=np.float32)[[0, 0, 1, 2]]
    features[1] = [0, 0, 0, 0, 0, 1]  # mislabelled image of identity "a"
    noisy = np.array([False, True, False, False])
    cleaned = megaface.clean_probe_features(features, ["a", "a", "b", "b"], noisy, seed=0)
    assert cleaned.shape == (4, 7) and np.all(cleaned[:, -1] == 0)
    assert np.array_equal(cleaned[[0, 2, 3], :6], features[[0, 2, 3]])
    np.testing.assert_allclose(cleaned[1, :6], features[0], atol=2e-3)  # identity centre + small jitter
    assert abs(np.linalg.norm(cleaned[1]) - 1) < 1e-6
    with pytest.raises(UserError, match="every image of b is in the noise list"):
        megaface.clean_probe_features(features, ["a", "a", "b", "b"], np.array([False, False, True, True]), 0)


# ----------------------------------------------------------------------------- the CLI on synthetic features

def write_features(root, probes, distractors, algo="syn"):
    for path, feature in zip(["/".join(p.split("/")) for p in _probe_paths()], probes):
        write_matrix(feature_path(root / "facescrub", path, algo), feature)
    for path, feature in zip(DISTRACTORS, distractors):
        write_matrix(feature_path(root / "megaface", path, algo), feature)


def _probe_paths():
    return [f"{name}/{name}_{n}.png" for name, count in IDENTITIES.items() for n in range(1, count + 1)]


def synthetic_features(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), list(IDENTITIES.values()))
    centres = rng.normal(size=(3, 32))
    probes = centres[labels] + 0.6 * rng.normal(size=(10, 32))
    distractors = rng.normal(size=(12, 32))
    distractors[4] = probes[0]  # the noisy distractor is a copy of a probe: it beats Alice's mates
    unit = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in (probes, distractors)]
    return unit[0], labels, unit[1]


def test_evaluate_matches_the_in_memory_evaluator(layout, tmp_path, capsys):
    probes, labels, distractors = synthetic_features()
    write_features(tmp_path / "features", probes, distractors)
    out = tmp_path / "report"
    assert run("--action", "evaluate", "--features_dir", tmp_path / "features", "--algo", "syn",
               "--facescrub_list", layout / "templatelists" / "facescrub_features_list.json",
               "--megaface_lists", layout / "templatelists", "--chunk_size", "5", "--out", out) == 0
    stdout = capsys.readouterr().out
    assert "10 probes of 3 identities, 12 distractors, subsets 5, 12" in stdout and "rank-1 @ 12 distractors" in stdout
    expected = evaluate_open_set(probes, labels, distractors, sizes=(5, 12))
    report = json.loads((out / "results.json").read_text())
    assert [s["distractors"] for s in report["subsets"]] == [5, 12]
    for s, subset in enumerate(report["subsets"]):
        assert [subset["cmc"][str(r)] for r in range(1, 11)] == pytest.approx(expected.cmc[s].tolist(), abs=1e-12)
        assert subset["tar_at_far"]["0.1"] == pytest.approx(expected.tar_at_far[s, -1])
    assert sorted(p.name for p in out.iterdir()) == ["cmc.png", "results.json", "results.md", "roc.png"]
    assert expected.cmc[1, 0] < 1.0  # the probe copy among the distractors costs rank-1 ...

    clean = tmp_path / "clean"
    assert run("--action", "remove_noise", "--features_dir", tmp_path / "features", "--clean_dir", clean,
               "--algo", "syn", "--facescrub_noises", layout / "facescrub_noises.txt",
               "--megaface_noises", layout / "megaface_noises.txt") == 0
    stdout = capsys.readouterr().out
    assert "1 noisy ones replaced" in stdout and "1 noisy ones marked" in stdout
    marked = read_feature(feature_path(clean / "megaface", NOISY_DISTRACTOR, "syn"))
    assert marked.shape == (33,) and marked[-1] == 100 and np.array_equal(marked[:32], distractors[4])
    assert read_feature(feature_path(clean / "megaface", DISTRACTORS[0], "syn"))[-1] == 0
    assert run("--action", "evaluate", "--features_dir", clean, "--algo", "syn", "--out", tmp_path / "r2",
               "--sizes", "12") == 0
    cleaned = json.loads((tmp_path / "r2" / "results.json").read_text())["subsets"][-1]
    assert cleaned["cmc"]["1"] >= expected.cmc[1, 0]  # ... and no longer once it is marked as noise


def test_bad_input_is_one_line(layout, tmp_path, capsysbinary):
    capsys = capsysbinary
    probes, _, distractors = synthetic_features()
    features = tmp_path / "features"
    write_features(features, probes, distractors)
    assert_one_error_line(run("--action", "evaluate", "--features_dir", tmp_path / "nowhere"), capsys,
                          "nowhere: --features_dir folder not found")
    assert_one_error_line(run("--action", "evaluate", "--features_dir", layout), capsys,
                          "facescrub: no FaceScrub feature files <identity>/<image>_pgaml.bin")
    (tmp_path / "half" / "megaface").mkdir(parents=True)
    assert_one_error_line(run("--action", "evaluate", "--features_dir", tmp_path / "half"), capsys,
                          "half/facescrub: folder not found (expected")
    assert_one_error_line(run("--action", "gen_features", "--aligned_dir", layout), capsys,
                          "--action gen_features needs --model")
    assert_one_error_line(run("--action", "evaluate", "--features_dir", features, "--sizes", "ten"), capsys,
                          "--sizes must be comma-separated integers")
    assert_one_error_line(run("--action", "dance"), capsys, "argument --action: invalid choice")
    assert_one_error_line(run("--action", "remove_noise", "--features_dir", features, "--algo", "syn",
                              "--megaface_noises", tmp_path / "none.txt"), capsys, "none.txt: --megaface_noises file not found")
    assert_one_error_line(run("--action", "remove_noise", "--features_dir", features, "--clean_dir", features,
                              "--algo", "syn", "--megaface_noises", layout / "megaface_noises.txt"), capsys,
                          "must differ from --features_dir")
    missing = feature_path(features / "megaface", DISTRACTORS[7], "syn")
    missing.unlink()
    assert_one_error_line(run("--action", "evaluate", "--features_dir", features, "--algo", "syn",
                              "--megaface_lists", layout / "templatelists"), capsys,
                          f"{missing}: feature file not found")


def test_corrupt_feature_through_the_script(layout, tmp_path):
    probes, _, distractors = synthetic_features()
    write_features(tmp_path / "features", probes, distractors)
    bad = feature_path(tmp_path / "features" / "megaface", DISTRACTORS[3], "syn")
    bad.write_bytes(bad.read_bytes()[:-4])
    result = subprocess.run([sys.executable, str(ROOT / "megaface.py"), "--action", "evaluate", "--features_dir",
                             str(tmp_path / "features"), "--algo", "syn", "--out", str(tmp_path / "r")],
                            capture_output=True, cwd=ROOT, check=False)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    lines = shown_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: corrupt feature file") and "header says 32x1 (144 bytes), file has 140 bytes" in lines[0]
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- end to end with a model

def test_crop_features_noise_evaluate(layout, tmp_path, capsys):
    aligned, features, clean, out = (tmp_path / n for n in ("aligned", "features", "clean", "report"))
    lists = ("--facescrub_list", layout / "templatelists" / "facescrub_features_list.json",
             "--megaface_lists", layout / "templatelists")
    assert run("--action", "crop_megaface", "--facescrub_dir", layout / "facescrub",
               "--megaface_dir", layout / "FlickrFinal2", "--aligned_dir", aligned, *lists) == 0
    stdout = capsys.readouterr().out
    assert "facescrub: 10 images" in stdout and "10 by JSON landmarks" in stdout
    assert "megaface: 12 images" in stdout and "10 by JSON landmarks, 1 by JSON face box, 1 without face JSON" in stdout
    face = decode_rgb((aligned / "facescrub" / "Alice_Ames" / "Alice_Ames_2.png").read_bytes())
    assert face.shape == (112, 112, 3)
    eye = np.round(ARCFACE_TEMPLATE_112[0]).astype(int)
    assert face[eye[1], eye[0]].max() < 60  # the drawn (dark) eye lands on the template's eye
    assert (aligned / "megaface" / DISTRACTORS[0]).is_file()

    assert run("--action", "gen_features", "--model", layout / "model_mobilefacenet.pth", "--aligned_dir", aligned,
               "--features_dir", features, "--algo", "mfn", "--batch_size", "8", "--device", "cpu", *lists) == 0
    stdout = capsys.readouterr().out
    assert "mobilefacenet (ours weights, RGB input)" in stdout and "megaface: 12 features written" in stdout
    feature = read_feature(feature_path(features / "facescrub", "Bob_Bell/Bob_Bell_1.png", "mfn"))
    assert feature.shape == (512,) and abs(np.linalg.norm(feature) - 1) < 1e-5
    assert run("--action", "gen_features", "--model", layout / "model_mobilefacenet.pth", "--aligned_dir", aligned,
               "--features_dir", features, "--algo", "mfn", "--device", "cpu", *lists) == 0
    assert "0 features written, 10 already there" in capsys.readouterr().out

    assert run("--action", "remove_noise", "--features_dir", features, "--clean_dir", clean, "--algo", "mfn",
               "--facescrub_noises", layout / "facescrub_noises.txt",
               "--megaface_noises", layout / "megaface_noises.txt", *lists) == 0
    assert run("--action", "evaluate", "--features_dir", clean, "--algo", "mfn", "--out", out, *lists) == 0
    stdout = capsys.readouterr().out
    assert "| distractors | rank-1 | rank-2 | rank-5 | rank-10 |" in stdout and "| 12 |" in stdout
    for name in ("cmc.png", "roc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crop_with_detection(tmp_path, capsys):
    """--detect: MTCNN's five points for the face the JSON box marks, the JSON's three where no
    detection overlaps the box, the most central face where there is no JSON."""
    from faces.alignment import align_face
    from faces.mtcnn import MTCNN
    from tests.helpers import skimage_photo

    astronaut = skimage_photo("astronaut")
    (face,) = MTCNN().detect(astronaut)
    folder = tmp_path / "facescrub" / "Eileen_Collins"
    folder.mkdir(parents=True)
    x1, y1, x2, y2 = face.box
    marked = {"bounding_box": {"x": x1 - 5, "y": y1 + 4, "width": x2 - x1 + 8, "height": y2 - y1 - 6}}
    elsewhere = json.loads(face_json(face.landmarks))
    elsewhere["bounding_box"] = {"x": 350.0, "y": 350.0, "width": 100.0, "height": 100.0}
    for n, meta in enumerate([marked, elsewhere, None], start=1):
        path = folder / f"Eileen_Collins_{n}.png"
        path.write_bytes(encode_png(astronaut))
        if meta is not None:
            path.with_name(path.name + ".json").write_text(json.dumps(meta))
    aligned = tmp_path / "aligned"
    assert run("--action", "crop_megaface", "--facescrub_dir", tmp_path / "facescrub", "--aligned_dir", aligned,
               "--detect", "--workers", "2") == 0
    assert "3 images" in capsys.readouterr().out.split("facescrub: ")[1]
    def crop(n):
        return decode_rgb((aligned / "facescrub" / "Eileen_Collins" / f"Eileen_Collins_{n}.png").read_bytes())

    by_mtcnn = align_face(astronaut, face.landmarks).astype(int)
    by_json = align_face(astronaut, face.landmarks[[1, 0, 2]], template_indices=[1, 0, 2]).astype(int)
    assert np.abs(crop(3) - by_mtcnn).max() <= 1  # no JSON: the whole photo's central face
    assert np.abs(crop(2) - by_json).max() <= 1  # the box marks no face: the JSON's three points
    # A box: only around it is searched (another pyramid: landmarks within about a pixel of the above).
    assert np.abs(crop(1) - by_mtcnn).mean() < 0.5 * np.abs(by_json - by_mtcnn).mean()
    assert run("--action", "crop_megaface", "--facescrub_dir", tmp_path / "facescrub", "--aligned_dir", aligned,
               "--detect", "--force") == 0
    assert "2 by MTCNN landmarks, 1 by JSON landmarks, 0 by JSON face box" in capsys.readouterr().out


def test_detect_flags_are_checked(tmp_path, capsysbinary):
    assert_one_error_line(run("--action", "crop_megaface", "--facescrub_dir", tmp_path, "--aligned_dir", tmp_path,
                              "--mtcnn_weights", tmp_path), capsysbinary, "--mtcnn_weights is for --detect")
    assert_one_error_line(run("--action", "crop_megaface", "--facescrub_dir", tmp_path, "--aligned_dir", tmp_path,
                              "--detect", "--mtcnn_weights", tmp_path), capsysbinary, "pnet.pt: MTCNN weight file")
    assert_one_error_line(run("--action", "evaluate", "--features_dir", tmp_path, "--detect"), capsysbinary,
                          "belong to --action crop_megaface")
