"""The facebank: known people's embeddings, and naming the faces of a photo by the nearest person.

A bank folder holds one sub-folder per person with their photos (TreB1eN's `data/facebank/<name>/*.jpg`).
`build_bank` detects and aligns each photo (the most central face; `aligned=True`: 112x112 crops as they are),
embeds them, and writes `facebank.npz` (per-photo embeddings, each person's L2-normalised mean) and
`facebank.json` (names, photos with content hashes, the model's identity and input conventions), atomically
and without pickles. A rebuild embeds again only the people whose photos changed; a bank built with another
model is refused (rebuild it). `identify` names each embedding by the cosine with each person's mean,
"Unknown" below the threshold (TreB1eN compares squared L2 distances instead: d^2 = 2 - 2 cos).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.images import photo_files
from utils import UserError, atomic_path, atomic_write_text

BANK_ARRAYS, BANK_INDEX = "facebank.npz", "facebank.json"
UNKNOWN = "Unknown"


def model_identity(model_path: Path) -> str:
    """The model's content hash: a bank is only ever compared with embeddings of the same weights."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass
class Facebank:
    names: list[str]
    means: np.ndarray                         # float32 (P, E), L2-normalised
    people: dict = field(default_factory=dict)  # name -> {"photos": [...], "hashes": [...], "embeddings": (k, E)}
    model: str = ""                           # model_identity of the weights that embedded it
    conventions: dict = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # photos left out, with the reason

    def save(self, folder: Path) -> None:
        arrays = {"means": self.means}
        arrays.update({f"person_{i}": self.people[name]["embeddings"] for i, name in enumerate(self.names)})
        with atomic_path(folder / BANK_ARRAYS) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        index = {"model": self.model, "conventions": self.conventions, "failed": self.failed,
                 "people": [{"name": name, "photos": self.people[name]["photos"], "hashes": self.people[name]["hashes"]}
                            for name in self.names]}
        atomic_write_text(folder / BANK_INDEX, json.dumps(index, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Facebank":
        index_path, arrays_path = folder / BANK_INDEX, folder / BANK_ARRAYS
        if not index_path.is_file() or not arrays_path.is_file():
            raise UserError(f"{folder}: no facebank here (build it: python facebank.py build --model M --bank {folder})")
        try:
            index = json.loads(index_path.read_text())
            with np.load(arrays_path, allow_pickle=False) as arrays:
                means = arrays["means"]
                people = {entry["name"]: {"photos": entry["photos"], "hashes": entry["hashes"],
                                          "embeddings": arrays[f"person_{i}"]}
                          for i, entry in enumerate(index["people"])}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise UserError(f"{folder}: a damaged facebank ({type(err).__name__}: {err}); rebuild it") from None
        return cls(list(people), means, people, index["model"], index["conventions"], index.get("failed", []))


def person_photos(bank: Path) -> dict[str, list[Path]]:
    if not bank.is_dir():
        raise UserError(f"{bank}: facebank folder not found (one sub-folder of photos per person)")
    people = {}
    for folder in sorted(p for p in bank.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = [folder / name for name in photo_files(folder, recursive=False)]
        if photos:
            people[folder.name] = photos
    if not people:
        raise UserError(f"{bank}: no people in the facebank (expected <name>/<photo>.jpg)")
    return people


def build_bank(bank: Path, model, read, flip: bool = True) -> tuple[Facebank, dict]:
    """Embed every person's photos (reusing the unchanged people of an earlier bank of the same model)."""
    identity = model_identity(model.path)
    try:
        previous = Facebank.load(bank)
    except UserError:
        previous = None
    if previous is not None and previous.model != identity:
        previous = None  # another model's bank: every person is embedded again
    people, failed, report = {}, [], {"reused": 0, "embedded": 0}
    for name, photos in person_photos(bank).items():
        relative = [p.relative_to(bank).as_posix() for p in photos]
        hashes = [file_hash(p) for p in photos]
        earlier = previous.people.get(name) if previous is not None else None
        if earlier is not None and earlier["photos"] == relative and earlier["hashes"] == hashes:
            people[name] = earlier
            failed += [why for why in previous.failed if why.startswith(f"{name}/")]
            report["reused"] += 1
            continue
        faces, kept, kept_hashes = [], [], []
        for path, rel, digest in zip(photos, relative, hashes):
            face, why = read(path)
            if face is None:
                failed.append(f"{rel}: {why}")
                continue
            faces.append(face)
            kept.append(rel)
            kept_hashes.append(digest)
        if not faces:
            raise UserError(f"{bank / name}: no usable face in any of {len(photos)} photos "
                            f"(first: {failed[-1] if failed else '?'})")
        people[name] = {"photos": relative, "hashes": hashes, "embeddings": model.embed(np.stack(faces), flip=flip)}
        report["embedded"] += 1
    names = list(people)
    means = np.stack([people[n]["embeddings"].mean(axis=0) for n in names]).astype(np.float32)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    built = Facebank(names, means, people, identity, dict(model.conventions), failed)
    built.save(bank)
    return built, report


def check_model(bank: Facebank, model, folder: Path) -> None:
    if bank.model != model_identity(model.path):
        raise UserError(f"{folder}: the facebank was built with another model; rebuild it with this one "
                        f"(python facebank.py build --model {model.path} --bank {folder})")


def identify(bank: Facebank, embeddings: np.ndarray, threshold: float) -> list[tuple[str, float]]:
    """(name or Unknown, cosine with that person's mean) for each embedding."""
    if not len(embeddings):
        return []
    scores = embeddings @ bank.means.T
    best = scores.argmax(axis=1)
    return [(bank.names[j] if scores[i, j] >= threshold else UNKNOWN, float(scores[i, j])) for i, j in enumerate(best)]
