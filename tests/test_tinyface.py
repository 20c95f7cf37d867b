"""TinyFace (evaluation/protocols/tinyface.py, eval.py --tinyface): a generated set in the official layout, the .mat
files written with scipy's savemat, numbers checked against the official evaluation's loop."""
import json

import cv2
import numpy as np
import pytest
import torch
from scipy.io import savemat

import eval as eval_command
from data.images import encode_jpeg
from data.synthetic import Nuisance, identity_for, render_face
from evaluation.protocols.tinyface import DISTRACTOR_ID, identity_of, read_tinyface
from inference.loader import load_model
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.helpers import run_command
from utils import UserError

IDENTITIES = 6
PROBES, MATCHES, DISTRACTORS = 2, 2, 25


def tiny(rng, person):
    """A low-resolution face as TinyFace has them (about 20 x 16 px)."""
    face = render_face(person, rng.normal(0, 10), rng.normal(0, 5), Nuisance(ambient=rng.uniform(0.3, 0.6)))
    return cv2.resize(face, (16, 20), interpolation=cv2.INTER_AREA)


def cell(names):
    """A MATLAB cell column of strings, as the official .mat files hold them."""
    out = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        out[i, 0] = np.array([name])
    return out


def write_tinyface(root):
    rng = np.random.default_rng(0)
    testing = root / "Testing_Set"
    names = {"Probe": [], "Gallery_Match": []}
    for folder in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (testing / folder).mkdir(parents=True)
    for identity in range(1, IDENTITIES + 1):
        person = identity_for(9, identity)
        for folder, count in (("Probe", PROBES), ("Gallery_Match", MATCHES)):
            for n in range(count):
                name = f"{identity}_{folder[0]}{n}.jpg"
                (testing / folder / name).write_bytes(encode_jpeg(tiny(rng, person), 95))
                names[folder].append(name)
    for n in range(DISTRACTORS):
        person = identity_for(9, 100 + n)
        (testing / "Gallery_Distractor" / f"{n}_d.jpg").write_bytes(encode_jpeg(tiny(rng, person), 95))
    savemat(testing / "probe_img_ID_pairs.mat", {
        "probe_set": cell(names["Probe"]), "probe_ids": np.array([[identity_of(n)] for n in names["Probe"]], float)})
    savemat(testing / "gallery_match_img_ID_pairs.mat", {
        "gallery_set": cell(names["Gallery_Match"]),
        "gallery_ids": np.array([[identity_of(n)] for n in names["Gallery_Match"]], float)})
    return testing


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyface")
    write_tinyface(root / "tinyface")
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), root / "model_mobilefacenet.pth")
    return root


def official_loop(probe_feats, probe_ids, gallery_feats, gallery_ids):
    """The TinyFace evaluation: argsort of each probe's distances, CMC and the non-interpolated AP per probe."""
    cmc = np.zeros(len(gallery_ids))
    aps = []
    for p in range(len(probe_ids)):
        order = np.argsort(np.linalg.norm(gallery_feats - probe_feats[p], axis=1))
        good = np.flatnonzero(np.isin(order, np.flatnonzero(gallery_ids == probe_ids[p])))
        cmc[good[0]:] += 1
        aps.append(np.mean([(i + 1) / (row + 1) for i, row in enumerate(good)]))
    return cmc / len(probe_ids), float(np.mean(aps))


def test_reads_the_official_layout(layout):
    protocol = read_tinyface(layout / "tinyface")
    assert len(protocol.probes) == IDENTITIES * PROBES and protocol.probes[0] == "Probe/1_P0.jpg"
    assert list(protocol.probe_ids[:3]) == [1, 1, 2]
    assert len(protocol.gallery) == IDENTITIES * MATCHES + DISTRACTORS
    assert (protocol.gallery_ids == DISTRACTOR_ID).sum() == DISTRACTORS
    assert identity_of("1234_56_7.jpg") == 1234 and identity_of("x_1.jpg") is None


def test_eval_tinyface_matches_the_official_loop(layout, tmp_path):
    out = tmp_path / "report"
    assert eval_command.main(["--model", str(layout / "model_mobilefacenet.pth"), "--tinyface",
                              str(layout / "tinyface"), "--batch_size", "16", "--out", str(out)]) == 0
    report = json.loads((out / "tinyface.json").read_text())
    assert (out / "cmc_tinyface.png").is_file() and (out / "tinyface.md").is_file()
    protocol = read_tinyface(layout / "tinyface")
    features = np.load(out / "tinyface_features.npy")
    # the features are the upscaled faces' embeddings
    model = load_model(layout / "model_mobilefacenet.pth")
    faces = [cv2.resize(cv2.cvtColor(cv2.imread(str(protocol.root / p)), cv2.COLOR_BGR2RGB), (112, 112),
                        interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) for p in protocol.paths()]
    np.testing.assert_allclose(features, model.embed(np.stack(faces)), atol=1e-5)
    num = len(protocol.probes)
    cmc, mean_ap = official_loop(features[:num], protocol.probe_ids, features[num:], protocol.gallery_ids)
    for rank in (1, 5, 10, 20):
        assert report["cmc"][str(rank)] == pytest.approx(cmc[rank - 1], abs=1e-12)
    assert report["mAP"] == pytest.approx(mean_ap, abs=1e-12)
    assert report["gallery"] == IDENTITIES * MATCHES + DISTRACTORS


@pytest.mark.parametrize("damage, message", [
    (lambda t: (t / "probe_img_ID_pairs.mat").unlink(), "probe_img_ID_pairs.mat: not found"),
    (lambda t: (t / "probe_img_ID_pairs.mat").write_bytes(b"not a mat file"), "not a readable MATLAB file"),
    (lambda t: savemat(t / "gallery_match_img_ID_pairs.mat", {"gallery_set": cell(["1_G0.jpg"])}),
     "expected the variables gallery_set and gallery_ids"),
    (lambda t: savemat(t / "probe_img_ID_pairs.mat", {"probe_set": cell(["9_P0.jpg"]), "probe_ids": [[9.0]]}),
     "lists 9_P0.jpg, which is not in"),
])
def test_damaged_layout_is_one_clear_error(layout, tmp_path, damage, message):
    import shutil
    shutil.copytree(layout / "tinyface", tmp_path / "tinyface")
    damage(tmp_path / "tinyface" / "Testing_Set")
    with pytest.raises(UserError, match=message):
        read_tinyface(tmp_path / "tinyface")


def test_eval_tinyface_missing_folder_exits_2(layout, tmp_path):
    result = run_command("eval.py", "--model", layout / "model_mobilefacenet.pth", "--tinyface", tmp_path,
                         "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Probe: folder not found" in result.stderr.strip().splitlines()[-1]
