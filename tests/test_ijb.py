"""IJB-B/C (evaluation/protocols/ijb.py, eval.py --ijb): a small generated set in the official file formats (synthetic
faces written as JPEG loose crops with their five landmarks), numbers checked against an independent loop."""
import json

import cv2
import numpy as np
import pytest
import torch

import eval as eval_command
from data.images import encode_jpeg
from data.synthetic import Nuisance, identity_for, render_face
from evaluation.protocols.ijb import read_ijb, template_features
from faces.alignment import ARCFACE_TEMPLATE_112, transform_points
from inference.loader import LoadedModel, load_model
from inference.weights import record_threshold, save_backbone_weights
from model import build_backbone
from tests.helpers import interrupt_at_call, run_command
from utils import UserError

SUBJECTS = 8                 # 0-3 enrolled in G1, 4-7 in G2
PROBE_TEMPLATES = 3          # per subject, each of two media (one a two-frame video)
CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"


def loose_crop(rng, face):
    """The aligned 112x112 face put into a 160x160 photo at a random similarity; the landmarks there."""
    angle, scale = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(1.0, 1.3)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.hstack([rotation, rng.uniform(5, 25, size=(2, 1))])
    photo = cv2.warpAffine(face, matrix, (160, 160), borderValue=(80, 90, 100))
    return photo, transform_points(matrix, ARCFACE_TEMPLATE_112)


def write_ijb(root, prefix="ijbc", galleries=("G1", "G2")):
    """Every file eval_ijbc.py and the 1:N protocol read, for SUBJECTS people; returns the subject of each template."""
    rng = np.random.default_rng(0)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    points, tid_mid, csv_rows = [], [], {"gallery": [], "probe": []}
    subject_of = {}
    image, media = 0, 0
    for subject in range(SUBJECTS):
        person = identity_for(5, subject)
        for t in range(1 + PROBE_TEMPLATES):
            template = 100 + subject * 10 + t
            subject_of[template] = subject
            for frames in (1, 2):  # a still, then a two-frame video
                media += 1
                for _ in range(frames):
                    image += 1
                    name = f"{image}.jpg"
                    face = render_face(person, rng.normal(0, 8), rng.normal(0, 5), Nuisance(ambient=rng.uniform(0.3, 0.6)))
                    photo, landmarks = loose_crop(rng, face)
                    (root / "loose_crop" / name).write_bytes(encode_jpeg(photo, 95))
                    faceness = rng.uniform(0.3, 1.0)
                    points.append(f"{name} " + " ".join(f"{v:.3f}" for v in landmarks.ravel()) + f" {faceness:.3f}")
                    tid_mid.append(f"{name} {template} {media}")
                    csv_rows["gallery" if t == 0 else "probe"].append((subject // 4, f"{template},{subject + 1},{name},"
                                                                                     f"{media},0,0,10,10\n"))
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    templates = sorted(subject_of)
    pairs = [f"{a} {b} {int(subject_of[a] == subject_of[b])}" for i, a in enumerate(templates) for b in templates[i + 1:]]
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    for index, name in enumerate(galleries):
        rows = [row for gallery, row in csv_rows["gallery"] if gallery == index]
        (root / "meta" / f"{prefix}_1N_gallery_{name}.csv").write_text(CSV_HEADER + "".join(rows))
    (root / "meta" / f"{prefix}_1N_probe_mixed.csv").write_text(CSV_HEADER + "".join(r for _, r in csv_rows["probe"]))
    return subject_of


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    subject_of = write_ijb(root / "IJBC")
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), root / "model_mobilefacenet.pth")
    return root, subject_of


# ----------------------------------------------------------------------------- the independent loop

def independent_features(root, model):
    """Each image read with OpenCV, aligned with scikit-image's similarity estimate (as insightface), embedded."""
    from skimage.transform import SimilarityTransform

    lines = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n")
    faces = []
    for line in filter(None, lines):
        fields = line.split()
        bgr = cv2.imread(str(root / "loose_crop" / fields[0]))
        transform = SimilarityTransform.from_estimate(np.array(fields[1:11], float).reshape(5, 2), ARCFACE_TEMPLATE_112)
        aligned = cv2.warpAffine(bgr, transform.params[:2], (112, 112), borderValue=0.0)
        faces.append(cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
    return model.embed(np.stack(faces), batch_size=16)


def independent_templates(root, features, weighted=True):
    """insightface's image2template_feature, one template and media at a time."""
    scores = [float(line.split()[-1]) for line in
              filter(None, (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n"))]
    rows = [line.split() for line in filter(None, (root / "meta" / "ijbc_face_tid_mid.txt").read_text().split("\n"))]
    by_template = {}
    for i, (_, template, media) in enumerate(rows):
        by_template.setdefault(int(template), {}).setdefault(int(media), []).append(
            features[i] * (scores[i] if weighted else 1.0))
    out = {}
    for template, medias in by_template.items():
        total = sum(np.mean(frames, axis=0) for frames in medias.values())
        out[template] = total / np.linalg.norm(total)
    return out


def brute_tar_at_far(scores, labels, target):
    """The best TAR over every threshold whose FAR <= target."""
    best = 0.0
    for t in np.r_[np.unique(scores), np.inf]:
        if np.mean(scores[~labels] >= t) <= target:
            best = max(best, np.mean(scores[labels] >= t))
    return best


def brute_search(templates, gallery, probes, subject_of):
    """rank-1/5/10 and TPIR at FPIR 0.1 of the probes against one gallery, with argsort and a threshold sweep."""
    gallery_subjects = np.array([subject_of[t] for t in gallery])
    ranks, mate_scores, strangers = [], [], []
    for probe in probes:
        scores = np.array([templates[probe] @ templates[g] for g in gallery])
        if subject_of[probe] in gallery_subjects:
            order = np.argsort(-scores)
            ranks.append(int(np.flatnonzero(gallery_subjects[order] == subject_of[probe])[0]) + 1)
            mate_scores.append(scores[gallery_subjects == subject_of[probe]][0])
        else:
            strangers.append(scores.max())
    ranks, mate_scores, strangers = np.array(ranks), np.array(mate_scores), np.array(strangers)
    tpir = 0.0  # the best TPIR over every threshold whose FPIR <= 0.1
    for t in np.r_[strangers, mate_scores, np.inf]:
        if np.mean(strangers >= t) <= 0.1:
            tpir = max(tpir, np.mean((ranks == 1) & (mate_scores >= t)))
    return {r: np.mean(ranks <= r) for r in (1, 5, 10)}, tpir


# ----------------------------------------------------------------------------- tests

def test_reads_the_official_files(layout):
    root, subject_of = layout
    protocol = read_ijb(root / "IJBC", "IJBC")
    assert len(protocol.images.names) == SUBJECTS * (1 + PROBE_TEMPLATES) * 3
    assert protocol.images.landmarks.shape == (len(protocol.images.names), 5, 2)
    assert protocol.pair_labels.sum() == SUBJECTS * (1 + PROBE_TEMPLATES) * PROBE_TEMPLATES // 2
    assert set(protocol.galleries) == {"G1", "G2"}
    templates, subjects = protocol.galleries["G1"]
    assert list(templates) == [100 + 10 * s for s in range(4)] and list(subjects) == [1, 2, 3, 4]
    assert protocol.probes[0].size == SUBJECTS * PROBE_TEMPLATES


def test_template_pooling_is_insightfaces(layout):
    root, _ = layout
    protocol = read_ijb(root / "IJBC")
    features = np.random.default_rng(1).normal(size=(len(protocol.images.names), 8)).astype(np.float32)
    for weighted in (True, False):
        ids, pooled = template_features(features, protocol.images.templates, protocol.images.medias,
                                        protocol.images.faceness if weighted else None)
        expected = independent_templates(root / "IJBC", features, weighted)
        assert list(ids) == sorted(expected)
        np.testing.assert_allclose(pooled, np.stack([expected[t] for t in ids]), atol=1e-6)


def test_eval_ijb_matches_an_independent_loop(layout, tmp_path):
    root, subject_of = layout
    out = tmp_path / "report"
    assert eval_command.main(["--model", str(root / "model_mobilefacenet.pth"), "--ijb", str(root / "IJBC"),
                              "--target", "ijbc", "--batch_size", "20", "--out", str(out)]) == 0
    report = json.loads((out / "ijbc.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"ijbc.md", "ijbc.json", "roc_ijbc.png", "ijbc_scores.npy",
                                               "ijbc_features.npy", "det_ijbc_G1.png", "det_ijbc_G2.png"}
    features = np.load(out / "ijbc_features.npy")
    model = load_model(root / "model_mobilefacenet.pth")
    np.testing.assert_allclose(features, independent_features(root / "IJBC", model), atol=2e-3)

    templates = independent_templates(root / "IJBC", features)
    lines = [line.split() for line in (root / "IJBC" / "meta" / "ijbc_template_pair_label.txt").read_text().split("\n") if line]
    scores = np.array([templates[int(a)] @ templates[int(b)] for a, b, _ in lines])
    labels = np.array([label == "1" for _, _, label in lines])
    np.testing.assert_allclose(np.load(out / "ijbc_scores.npy"), scores, atol=1e-6)
    tars = report["verification"]["tar_at_far"]
    assert set(tars) == {"0.01", "0.1"}  # 448 negatives support FAR 1e-2 but not 1e-3
    for target, entry in tars.items():
        assert entry["tar"] == pytest.approx(brute_tar_at_far(scores, labels, float(target)), abs=1e-12)
        assert entry["far"] <= float(target)

    probes = [t for t in sorted(subject_of) if t % 10 != 0]
    for index, name in enumerate(("G1", "G2")):
        gallery = [100 + 10 * s for s in range(4 * index, 4 * index + 4)]
        cmc, tpir = brute_search(templates, gallery, probes, subject_of)
        entry = report["identification"][name]
        assert entry["mated_probes"] == 4 * PROBE_TEMPLATES and entry["non_mated_probes"] == 4 * PROBE_TEMPLATES
        for rank, value in cmc.items():
            assert entry["cmc"][str(rank)] == pytest.approx(value, abs=1e-12)
        assert entry["tpir_at_fpir"]["0.1"]["tpir"] == pytest.approx(tpir, abs=1e-12)
        assert "0.01" not in entry["tpir_at_fpir"]  # 12 non-mated probes cannot measure FPIR 1e-2
        assert "at_model_threshold" not in entry  # no threshold stored with the model yet

    # With a threshold stored with the model: FPIR and FNIR at it (the features are reused, nothing re-embedded).
    threshold = float(np.median(scores))
    record_threshold(root / "model_mobilefacenet.pth", threshold, "test")
    try:
        assert eval_command.main(["--model", str(root / "model_mobilefacenet.pth"), "--ijb", str(root / "IJBC"),
                                  "--out", str(out)]) == 0
    finally:
        (root / "model_mobilefacenet.json").write_text(json.dumps(
            {k: v for k, v in json.loads((root / "model_mobilefacenet.json").read_text()).items()
             if not k.startswith("threshold")}))
    report = json.loads((out / "ijbc.json").read_text())
    for index, name in enumerate(("G1", "G2")):
        gallery = [100 + 10 * s for s in range(4 * index, 4 * index + 4)]
        subjects = {subject_of[g] for g in gallery}
        strangers = [max(templates[p] @ templates[g] for g in gallery) for p in probes if subject_of[p] not in subjects]
        hits = []
        for p in (p for p in probes if subject_of[p] in subjects):
            best = max(gallery, key=lambda g: templates[p] @ templates[g])
            hits.append(subject_of[best] == subject_of[p] and templates[p] @ templates[best] >= threshold)
        at = report["identification"][name]["at_model_threshold"]
        assert at["fpir"] == pytest.approx(np.mean(np.array(strangers) >= threshold))
        assert at["fnir"] == pytest.approx(1 - np.mean(hits))


def test_embedding_resumes_after_an_interruption(layout, tmp_path, monkeypatch):
    root, _ = layout
    args = ["--model", str(root / "model_mobilefacenet.pth"), "--ijb", str(root / "IJBC"), "--batch_size", "16",
            "--out", str(tmp_path / "report"), "--features", str(tmp_path / "features")]
    real = interrupt_at_call(monkeypatch, LoadedModel, "embed", 3)
    with pytest.raises(KeyboardInterrupt):
        eval_command.main(args)
    progress = json.loads((tmp_path / "features" / "ijbc_features.json").read_text())
    assert progress["done"] == 32 and (tmp_path / "features" / "ijbc_features.partial.npy").is_file()
    calls = []
    monkeypatch.setattr(LoadedModel, "embed", lambda self, images, *a: calls.append(len(images)) or real(self, images, *a))
    assert eval_command.main(args) == 0
    assert sum(calls) == len(read_ijb(root / "IJBC").images.names) - 32  # only the rows not yet done
    resumed = np.load(tmp_path / "features" / "ijbc_features.npy")
    monkeypatch.setattr(LoadedModel, "embed", real)
    assert eval_command.main([*args[:-2], "--features", str(tmp_path / "fresh")]) == 0
    np.testing.assert_allclose(resumed, np.load(tmp_path / "fresh" / "ijbc_features.npy"), atol=1e-6)
    calls.clear()
    monkeypatch.setattr(LoadedModel, "embed", lambda self, images, *a: calls.append(len(images)) or real(self, images, *a))
    assert eval_command.main(args) == 0 and calls == []  # complete: nothing embedded again


def test_ijbb_names_its_galleries_s1_s2(tmp_path):
    write_ijb(tmp_path / "IJBB", prefix="ijbb", galleries=("S1", "S2"))
    protocol = read_ijb(tmp_path / "IJBB", "IJBB")
    assert set(protocol.galleries) == {"S1", "S2"}
    with pytest.raises(UserError, match="ijbc_name_5pts_score.txt: not found"):
        read_ijb(tmp_path / "IJBB", "IJBC")


@pytest.mark.parametrize("damage, message", [
    (lambda meta: (meta / "ijbc_face_tid_mid.txt").write_text("1.jpg 100 1\n"), "1 lines, .* has 96 .*matched by order"),
    (lambda meta: (meta / "ijbc_name_5pts_score.txt").write_text(
        (meta / "ijbc_name_5pts_score.txt").read_text().replace(" ", " x", 1)), "line 1 holds a value that is not a number"),
    (lambda meta: (meta / "ijbc_template_pair_label.txt").write_text("100 999 1\n"), "template 999 .*has no image"),
    (lambda meta: (meta / "ijbc_1N_gallery_G2.csv").unlink(), "ijbc_1N_gallery_G2.csv: not found"),
])
def test_damaged_files_are_one_clear_error(layout, tmp_path, damage, message):
    import shutil
    root, _ = layout
    shutil.copytree(root / "IJBC", tmp_path / "IJBC")
    damage(tmp_path / "IJBC" / "meta")
    with pytest.raises(UserError, match=message):
        read_ijb(tmp_path / "IJBC")


def test_eval_ijb_bad_folder_exits_2(layout, tmp_path):
    root, _ = layout
    result = run_command("eval.py", "--model", root / "model_mobilefacenet.pth", "--ijb", tmp_path / "nothing",
                         "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("nothing: IJB folder not found")
