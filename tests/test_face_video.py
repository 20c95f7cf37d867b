"""face_verify.py --video / infer_on_video.py / take_pic.py on a generated clip of real faces (scikit-image's
astronaut, in the bank, and cameraman, a stranger) with OpenCV's SFace: names per frame, every frame written at the
input's rate, `--every K` naming as `--every 1` does, and the bad inputs."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from tests.helpers import mtcnn_photos, run_command, write_photo
from tests.test_onnx import SFACE

FPS, FRAMES, SIZE = 10.0, 12, (640, 360)


def face_patch(photo: np.ndarray, box, side: int) -> np.ndarray:
    """The face of `box` with as much again around it, resized to `side` x `side`."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    top, left = int(max(0, cy - half)), int(max(0, cx - half))
    crop = photo[top:int(cy + half), left:int(cx + half)]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 640x360 clip: the astronaut drifting right and growing, the cameraman drifting left; and the boxes."""
    from faces.mtcnn import MTCNN

    folder = tmp_path_factory.mktemp("clip")
    photos, detector = mtcnn_photos(), MTCNN()
    astronaut = face_patch(photos["astronaut"], detector.detect(photos["astronaut"])[0].box, 150)
    camera = face_patch(photos["camera"], detector.detect(photos["camera"])[0].box, 130)
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (SIZE[1], SIZE[0], 3), dtype=np.uint8), (0, 0), 8)
    path = folder / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for i in range(FRAMES):
        frame = background.copy()
        side = 150 + 2 * i
        frame[60:60 + side, 40 + 4 * i:40 + 4 * i + side] = cv2.resize(astronaut, (side, side))
        frame[150:280, 460 - 3 * i:590 - 3 * i] = camera
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    bank = folder / "facebank"
    write_photo(bank / "eileen" / "portrait.jpg", photos["astronaut"])
    write_photo(bank / "eileen" / "tilted.jpg", photos["astronaut_rotated_20"])
    built = run_command("facebank.py", "build", "--model", SFACE, "--bank", bank)
    assert built.returncode == 0, built.stderr
    return path, bank


def names_by_frame(csv_path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    frames = {}
    for row in rows:
        frames.setdefault(int(row["frame"]), []).append(row)
    return {i: [r["name"] for r in sorted(faces, key=lambda r: float(r["x1"]))] for i, faces in frames.items()}, rows


def test_every_frame_is_named_and_written(clip, tmp_path):
    path, bank = clip
    out = tmp_path / "named.avi"
    result = run_command("face_verify.py", "--model", SFACE, "--bank", bank, "--video", path, "--save", out, "--score")
    assert result.returncode == 0, result.stderr
    assert f"{FRAMES} frames of" in result.stdout and "eileen; some Unknown" in result.stdout
    names, rows = names_by_frame(out.with_suffix(".csv"))
    assert names == {i: ["eileen", "Unknown"] for i in range(FRAMES)}  # the astronaut is on the left
    assert all(r["detected"] == "1" for r in rows)
    written = cv2.VideoCapture(str(out))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    count = 0
    while written.read()[0]:
        count += 1
    assert count == FRAMES and (written.get(cv2.CAP_PROP_FRAME_WIDTH), written.get(cv2.CAP_PROP_FRAME_HEIGHT)) == SIZE
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frames"] == FRAMES and len(summary["detections"]) == 2 * FRAMES
    assert not list(tmp_path.glob(".named*"))  # no temporary file left behind


def test_every_k_names_as_every_frame_does(clip, tmp_path):
    path, bank = clip
    every = run_command("face_verify.py", "--model", SFACE, "--bank", bank, "--video", path, "--every", "4",
                        "--save", tmp_path / "k4.mp4", "--face_limit", "2")
    assert every.returncode == 0, every.stderr
    names, rows = names_by_frame(tmp_path / "k4.csv")
    assert names == {i: ["eileen", "Unknown"] for i in range(FRAMES)}
    assert {int(r["frame"]) for r in rows if r["detected"] == "1"} == {0, 4, 8, FRAMES - 1}
    limited = run_command("face_verify.py", "--model", SFACE, "--bank", bank, "--video", path, "--face_limit", "1",
                          "--duration", "0.5", "--save", tmp_path / "one.avi")
    assert limited.returncode == 0, limited.stderr
    names, _ = names_by_frame(tmp_path / "one.csv")
    assert names == {i: ["eileen"] for i in range(5)}  # the larger face only; 0.5 s = 5 frames


def test_infer_on_video_keeps_treb1ens_flags(clip, tmp_path):
    path, bank = clip
    out = tmp_path / "recording"
    result = run_command("infer_on_video.py", "--model", SFACE, "--bank", bank, "-f", path, "-s", out, "-c",
                         "-th", "1.274", "-b", "0.2", "-d", "0.5")  # d2 1.274 = cosine 0.363
    assert result.returncode == 0, result.stderr
    assert "threshold 0.363" in result.stdout
    names, _ = names_by_frame(tmp_path / "recording.csv")
    assert sorted(names) == list(range(5)) and all(n == ["eileen", "Unknown"] for n in names.values())
    assert (tmp_path / "recording.avi").is_file()


def test_take_pic_adds_a_person_from_a_clip(clip, tmp_path):
    path, bank = clip
    new_bank = tmp_path / "bank"
    result = run_command("take_pic.py", "-n", "eileen", "--bank", new_bank, "--video", path, "--count", "3",
                         "--interval", "0.3")
    assert result.returncode == 0, result.stderr
    crops = sorted((new_bank / "eileen").glob("*.jpg"))
    assert len(crops) == 3 and all(cv2.imread(str(c)).shape == (112, 112, 3) for c in crops)
    built = run_command("facebank.py", "build", "--model", SFACE, "--bank", new_bank)
    assert built.returncode == 0 and "3 photos used, 0 left out" in built.stdout, built.stdout + built.stderr
    named = run_command("face_verify.py", "--model", SFACE, "--bank", new_bank, "--video", path, "--duration", "0.2")
    assert "eileen; some Unknown" in named.stdout, named.stdout + named.stderr


def test_bad_video_inputs_are_one_line(clip, tmp_path):
    import face_verify
    import take_pic
    from utils import UserError

    path, bank = clip
    text = tmp_path / "notes.avi"
    text.write_text("not a video")
    model = ["--model", str(SFACE), "--bank", str(bank)]
    cases = [  # in-process (each would otherwise start Python and torch); the CLI's one-line form is checked below
        (face_verify, ["--video", tmp_path / "none.mp4", *model], "none.mp4: video file not found"),
        (face_verify, ["--video", text, *model], "notes.avi: OpenCV cannot open this video"),
        (face_verify, ["--camera", "97", *model], "--camera 97: no camera can be opened"),
        (face_verify, ["--video", path, "--save", tmp_path / "out.gif", *model], "a video needs one of the suffixes"),
        (face_verify, ["--video", path, "--begin", "60", *model], "no frames could be read from 60 s on"),
        (take_pic, ["-n", "x", "--bank", tmp_path / "b", "--camera", "97"], "--camera 97: no camera can be opened"),
        (face_verify, ["--video", path, "--every", "0", *model], "--every must be >= 1"),
    ]
    for command, args, message in cases:
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            command.main([str(a) for a in args])
    assert not (tmp_path / "out.gif").exists() and not (tmp_path / "b").exists()
    result = run_command("face_verify.py", "--video", text, *model)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {text}: OpenCV cannot open this video (not a video, or a "
                                                  "codec it lacks)"]
