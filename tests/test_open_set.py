"""eval.py --open_set: probes against a facebank, FPIR and FNIR at the threshold checked against the facebank's
own naming (inference.facebank.identify), the DET curve and TPIR@FPIR."""
import json

import numpy as np
import pytest
import torch

import eval as eval_command
from data.images import encode_jpeg
from data.synthetic import Nuisance, identity_for, render_face
from inference.facebank import UNKNOWN, Facebank, build_bank, identify
from inference.faces_in_files import FaceReader
from inference.loader import load_model
from inference.weights import save_backbone_weights
from model import build_backbone
from utils import UserError


def write_people(root, people, photos, seed):
    rng = np.random.default_rng(seed)
    for index in people:
        person = identity_for(13, index)
        (root / f"p{index}").mkdir(parents=True)
        for n in range(photos):
            face = render_face(person, rng.normal(0, 8), rng.normal(0, 5), Nuisance(ambient=rng.uniform(0.3, 0.6)))
            (root / f"p{index}" / f"{n}.jpg").write_bytes(encode_jpeg(face, 95))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_set")
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), root / "model_mobilefacenet.pth")
    write_people(root / "bank", range(5), 2, seed=0)
    write_people(root / "probes", range(10), 2, seed=1)  # p0..p4 known, p5..p9 strangers
    model = load_model(root / "model_mobilefacenet.pth")
    build_bank(root / "bank", model, FaceReader(aligned=True))
    return root


def test_open_set_matches_the_facebanks_naming(setup, tmp_path):
    model = load_model(setup / "model_mobilefacenet.pth")
    bank = Facebank.load(setup / "bank")
    reader = FaceReader(aligned=True)
    names, faces = [], []
    for folder in sorted((setup / "probes").iterdir()):
        for photo in sorted(folder.iterdir()):
            names.append(folder.name)
            faces.append(reader(photo)[0])
    embeddings = model.embed(np.stack(faces))
    threshold = float(np.median([score for _, score in identify(bank, embeddings, -1.0)]))
    named = [name for name, _ in identify(bank, embeddings, threshold)]
    known = [n in bank.names for n in names]
    expected_fpir = np.mean([got != UNKNOWN for got, k in zip(named, known) if not k])
    expected_fnir = np.mean([got != true for got, true, k in zip(named, names, known) if k])

    out = tmp_path / "report"
    assert eval_command.main(["--model", str(setup / "model_mobilefacenet.pth"), "--open_set", str(setup / "probes"),
                              "--bank", str(setup / "bank"), "--aligned", "--threshold", str(threshold),
                              "--out", str(out)]) == 0
    report = json.loads((out / "open_set.json").read_text())
    assert report["mated_probes"] == 10 and report["non_mated_probes"] == 10
    assert report["at_threshold"]["fpir"] == pytest.approx(expected_fpir)
    assert report["at_threshold"]["fnir"] == pytest.approx(expected_fnir)
    assert report["tpir_at_fpir"]["0.1"]["fpir"] <= 0.1
    assert (out / "det_open_set.png").read_bytes()[:4] == b"\x89PNG"


def test_open_set_needs_the_banks_model(setup, tmp_path):
    torch.manual_seed(1)
    save_backbone_weights(build_backbone("mobilefacenet"), tmp_path / "other.pth")
    with pytest.raises(UserError, match="built with another model"):
        eval_command.main(["--model", str(tmp_path / "other.pth"), "--open_set", str(setup / "probes"), "--bank",
                           str(setup / "bank"), "--aligned", "--out", str(tmp_path / "r")])
