"""Verification sets from your own faces (data/pairs.py, data/prepare_data.py --pairs_from / --pairs_file): LFW-style
balanced, identity-disjoint folds, the .bin and prepared layout, and eval.py on the result."""
import numpy as np
import pytest
import torch

import eval as eval_command
from data.images import decode_rgb, encode_jpeg
from data.pairs import identity_folders, make_pairs, read_pairs_file
from data.prepare_data import main as prepare
from data.synthetic import Nuisance, identity_for, render_face
from data.valsets import load_valset, read_bin
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.helpers import mtcnn_photos, run_command, write_photo
from utils import UserError
from verification import fold_sizes


def write_faces(root, identities=16, photos=3):
    rng = np.random.default_rng(0)
    for identity in range(identities):
        person = identity_for(11, identity)
        folder = root / f"person_{identity:02d}"
        folder.mkdir(parents=True)
        for n in range(photos + identity % 2):  # 3 or 4 photos each
            face = render_face(person, rng.normal(0, 10), rng.normal(0, 5), Nuisance(ambient=rng.uniform(0.3, 0.6)))
            (folder / f"{n}.jpg").write_bytes(encode_jpeg(face, 95))
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("own") / "faces")


def person(path):
    return path.split("/")[0]


def test_pairs_are_balanced_and_identity_disjoint_across_folds(faces):
    identities = identity_folders(faces)
    pairs = make_pairs(identities, 46, num_folds=4, seed=1)
    assert len(pairs) == 46
    folds = [p.fold for p in pairs]
    assert folds == sorted(folds)  # written fold after fold ...
    assert [folds.count(f) for f in range(4)] == list(fold_sizes(46, 4))  # ... with the k-fold's sizes
    people_of = [{person(x) for p in pairs if p.fold == f for x in (p.first, p.second)} for f in range(4)]
    for f in range(4):
        assert all(not people_of[f] & people_of[g] for g in range(4) if g != f)
        fold = [p for p in pairs if p.fold == f]
        assert sum(p.same for p in fold) == len(fold) // 2
    assert all((person(p.first) == person(p.second)) == p.same for p in pairs)
    assert len({(min(p.first, p.second), max(p.first, p.second)) for p in pairs}) == 46  # no pair twice
    same_people = {person(p.first) for p in pairs if p.same}
    assert len(same_people) >= 12  # spread over the identities, not drawn from a few
    assert make_pairs(identities, 46, 4, seed=1) == pairs and make_pairs(identities, 46, 4, seed=2) != pairs


def test_a_request_the_folder_cannot_fill_says_so(faces):
    identities = identity_folders(faces)
    with pytest.raises(UserError, match=r"fold 0: its identities allow \d+ same-person pairs, 25 wanted"):
        make_pairs(identities, 200, num_folds=4)
    with pytest.raises(UserError, match="16 identities cannot fill 10 identity-disjoint folds"):
        make_pairs(identities, 6000, num_folds=10)
    with pytest.raises(UserError, match="identity folder"):
        identity_folders(faces / "person_00")


def test_prepare_pairs_from_a_folder_then_eval(faces, tmp_path):
    out = tmp_path / "sets" / "mine"
    assert prepare(["--pairs_from", str(faces), "--out", str(out), "--pairs", "24", "--folds", "4", "--seed", "3"]) == 0
    images, issame = read_bin(tmp_path / "sets" / "mine.bin")
    listed = [line.split() for line in (tmp_path / "sets" / "mine.pairs.txt").read_text().splitlines()]
    assert len(images) == 48 and list(issame) == [row[2] == "1" for row in listed]
    assert images[0] == (faces / listed[0][0]).read_bytes()  # the aligned JPEG as it is
    prepared, prepared_same = load_valset(tmp_path / "sets", "mine")
    assert prepared.shape == (48, 3, 112, 112) and list(prepared_same) == list(issame)
    np.testing.assert_array_equal(prepared[1], decode_rgb(images[1]).transpose(2, 0, 1))
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), tmp_path / "model_mobilefacenet.pth")
    assert eval_command.main(["--model", str(tmp_path / "model_mobilefacenet.pth"), "--data_path",
                              str(tmp_path / "sets"), "--val_sets", "mine", "--folds", "4", "--batch_size", "16",
                              "--out", str(tmp_path / "report")]) == 0
    assert "| mine | 24 |" in (tmp_path / "report" / "results.md").read_text()


def test_pairs_file_and_align_detect(tmp_path):
    photos = mtcnn_photos()
    write_photo(tmp_path / "raw" / "eileen" / "a.jpg", photos["astronaut"])
    write_photo(tmp_path / "raw" / "eileen" / "b.jpg", photos["astronaut_rotated_20"])
    write_photo(tmp_path / "raw" / "camera" / "c.jpg", photos["camera"])
    (tmp_path / "raw" / "pairs.txt").write_text("# mine\neileen/a.jpg eileen/b.jpg 1\neileen/a.jpg camera/c.jpg 0\n")
    out = tmp_path / "sets" / "raw_pairs"
    assert prepare(["--pairs_file", str(tmp_path / "raw" / "pairs.txt"), "--out", str(out), "--align", "detect"]) == 0
    images, issame = load_valset(tmp_path / "sets", "raw_pairs")
    assert images.shape == (4, 3, 112, 112) and list(issame) == [True, False]
    np.testing.assert_array_equal(images[0], images[2])  # one photo, aligned once
    assert [p.fold for p in read_pairs_file(tmp_path / "raw" / "pairs.txt", tmp_path / "raw")] == [-1, -1]


@pytest.mark.parametrize("args, lines, message", [
    (["--pairs_file", "{tmp}/pairs.txt", "--out", "{tmp}/s/x"], "a.jpg b.jpg maybe\n", "line 1: expected 'path1 path2 same'"),
    (["--pairs_file", "{tmp}/pairs.txt", "--out", "{tmp}/s/x"], "a.jpg missing.jpg 1\n", "missing.jpg not found"),
    (["--pairs_file", "{tmp}/pairs.txt", "--out", "{tmp}/s/x"], "a.jpg big.jpg 1\n",
     "expected an aligned 112x112 face, got 200x100 (give --align detect for photos)"),
    (["--pairs_from", "{tmp}"], "", "--pairs_from / --pairs_file need --out DIR/NAME"),
])
def test_bad_input_is_one_line(tmp_path, args, lines, message):
    from tests.helpers import face_like
    write_photo(tmp_path / "a.jpg", face_like(0))
    write_photo(tmp_path / "big.jpg", face_like(1)[:100].repeat(2, axis=1)[:, :200])
    (tmp_path / "pairs.txt").write_text(lines)
    result = run_command("data/prepare_data.py", *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
