"""A verification set from your own faces: balanced pairs from an identity-per-folder tree, or your own pair list,
written as an insightface `.bin` and in the prepared uint8 layout, so eval.py and training use it like lfw.

`make_pairs` follows LFW's protocol (View 2): the identities are dealt into `num_folds` groups, every pair of fold
f is drawn from group f only (no person appears in two folds, so a threshold chosen on nine folds is tested on
people it has never seen), and each fold holds half same-person, half different-person pairs, spread over its
identities (same-person pairs are taken from each identity in turn; different-person pairs pair each identity in
turn with a random other). The folds are written one after the other with the sizes of sklearn's
`KFold(shuffle=False)` (the first P % k folds one pair more): exactly the folds `verification.verify` and
eval.py's `--folds k` cut, so evaluate with the same k.

`write_pair_set(out_dir, name, ...)` writes `<out_dir>/<name>.bin`, `<out_dir>/<name>/images.npy` + `issame.npy`
and `<out_dir>/<name>.pairs.txt` (`path1 path2 same fold`, the list the set was made from). Images are read by
a `load(path) -> JPEG/PNG bytes of a 112 x 112 aligned face` the caller gives (data/prepare_data.py reads aligned
files as they are, or detects and aligns raw photos through faces.pipeline with `--align detect`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.images import photo_files
from data.valsets import convert_bin, write_bin
from utils import UserError, atomic_write_text, read_text_lines


@dataclass(frozen=True)
class Pair:
    first: str      # image paths relative to the folder
    second: str
    same: bool
    fold: int


def identity_folders(root: str | Path) -> dict[str, list[str]]:
    """identity (sub-folder name) -> its photos (paths relative to `root`, sorted), for every sub-folder with one."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--pairs_from {root}: folder not found (expected one sub-folder of faces per identity)")
    identities = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = photo_files(folder)
        if photos:
            identities[folder.name] = [f"{folder.name}/{p}" for p in photos]
    if len(identities) < 2:
        raise UserError(f"--pairs_from {root}: {len(identities)} identity folder(s) with photos; pairs need at least 2")
    return identities


def fold_sizes(num_pairs: int, num_folds: int) -> list[int]:
    """np.array_split's sizes: sklearn KFold(shuffle=False)'s, the folds verification.verify cuts."""
    return [part.size for part in np.array_split(np.arange(num_pairs), num_folds)]


def deal_identities(identities: dict[str, list[str]], num_folds: int, rng) -> list[list[str]]:
    """The identities in `num_folds` groups of about equal image counts (largest first, each to the group holding
    the fewest images so far; the order among equals is random)."""
    names = list(identities)
    rng.shuffle(names)
    names.sort(key=lambda n: -len(identities[n]))  # stable: random among equal sizes
    groups: list[list[str]] = [[] for _ in range(num_folds)]
    images = np.zeros(num_folds, dtype=np.int64)
    for name in names:
        target = int(np.argmin(images + 1e-3 * np.array([len(g) for g in groups])))
        groups[target].append(name)
        images[target] += len(identities[name])
    return groups


def make_pairs(identities: dict[str, list[str]], num_pairs: int, num_folds: int = 10, seed: int = 0) -> list[Pair]:
    """`num_pairs` pairs in `num_folds` identity-disjoint folds, each half same, half different (see the module
    docstring); a folder too small for the request is a UserError saying what it allows."""
    if num_folds < 2:
        raise UserError(f"--folds must be >= 2, got {num_folds}")
    if len(identities) < 2 * num_folds:
        raise UserError(f"{len(identities)} identities cannot fill {num_folds} identity-disjoint folds (each needs at "
                        f"least 2 people): lower --folds or add identities")
    if num_pairs < 2 * num_folds:
        raise UserError(f"--pairs {num_pairs}: at least 2 per fold ({2 * num_folds} for {num_folds} folds)")
    rng = np.random.default_rng(seed)
    groups = deal_identities(identities, num_folds, rng)
    pairs = []
    for fold, (group, size) in enumerate(zip(groups, fold_sizes(num_pairs, num_folds))):
        same = _same_pairs(identities, group, size // 2, rng, fold)
        different = _different_pairs(identities, group, size - size // 2, rng, fold)
        chosen = [Pair(a, b, True, fold) for a, b in same] + [Pair(a, b, False, fold) for a, b in different]
        pairs += [chosen[i] for i in rng.permutation(len(chosen))]
    return pairs


def _capacity_hint(fold: int, what: str, available: int, wanted: int) -> UserError:
    return UserError(f"fold {fold}: its identities allow {available} {what} pairs, {wanted} wanted; ask for fewer "
                     "--pairs (or fewer --folds), or add photos")


def _same_pairs(identities, group, wanted, rng, fold) -> list[tuple[str, str]]:
    """Same-person pairs, one identity at a time in turn (each identity's pairs in random order)."""
    pools = []
    for name in group:
        photos = identities[name]
        count = len(photos)
        if count >= 2:
            first, second = np.triu_indices(count, 1)
            order = rng.permutation(first.size)
            pools.append([(photos[first[i]], photos[second[i]]) for i in order])
    available = sum(len(p) for p in pools)
    if available < wanted:
        raise _capacity_hint(fold, "same-person", available, wanted)
    chosen: list[tuple[str, str]] = []
    turn = 0
    while len(chosen) < wanted:
        pool = pools[turn % len(pools)]
        if pool:
            chosen.append(pool.pop())
        turn += 1
    return chosen


def _different_pairs(identities, group, wanted, rng, fold) -> list[tuple[str, str]]:
    """Different-person pairs: identity i (in turn) with a random other identity, random photos, no pair twice."""
    counts = np.array([len(identities[name]) for name in group])
    available = int((counts.sum() ** 2 - (counts ** 2).sum()) // 2)
    if available < wanted:
        raise _capacity_hint(fold, "different-person", available, wanted)
    if wanted > available // 2:  # dense: enumerate every pair and sample without replacement
        everything = [(a, b) for i, x in enumerate(group) for y in group[i + 1:]
                      for a in identities[x] for b in identities[y]]
        return [everything[i] for i in rng.choice(len(everything), wanted, replace=False)]
    chosen, seen = [], set()
    turn = 0
    while len(chosen) < wanted:
        first = group[turn % len(group)]
        others = [name for name in group if name != first]
        second = others[int(rng.integers(len(others)))]
        a = identities[first][int(rng.integers(len(identities[first])))]
        b = identities[second][int(rng.integers(len(identities[second])))]
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            chosen.append((a, b))
        turn += 1
    return chosen


def read_pairs_file(path: str | Path, root: str | Path) -> list[Pair]:
    """A user's own pairs, `path1 path2 same` per line (same: 1/0, true/false, same/different; paths relative to
    `root` or absolute; `#` comments and blank lines skipped). Fold -1: eval.py's k-fold cuts them in order."""
    path, root = Path(path), Path(root)
    lines = read_text_lines(path, f"--pairs_file {path}")
    truth = {"1": True, "true": True, "same": True, "0": False, "false": False, "different": False}
    pairs = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2].lower() not in truth:
            raise UserError(f"{path}: line {number}: expected 'path1 path2 same' with same = 1/0, got {line.strip()!r}")
        for name in fields[:2]:
            if not (root / name).is_file():
                raise UserError(f"{path}: line {number}: {root / name} not found")
        pairs.append(Pair(fields[0], fields[1], truth[fields[2].lower()], -1))
    if not pairs:
        raise UserError(f"{path}: no pairs")
    return pairs


def pairs_text(pairs: list[Pair]) -> str:
    return "".join(f"{p.first} {p.second} {int(p.same)} {p.fold}\n" for p in pairs)


def write_pair_set(out_dir: str | Path, name: str, pairs: list[Pair], load: Callable[[str], bytes],
                   progress=None) -> Path:
    """`<out_dir>/<name>.bin`, its prepared `<name>/images.npy` + `issame.npy`, and `<name>.pairs.txt`; each image
    loaded once (`load(relative path)` -> image bytes), `progress(n)` after each."""
    out_dir = Path(out_dir)
    cache: dict[str, bytes] = {}
    images = []
    for pair in pairs:
        for image in (pair.first, pair.second):
            if image not in cache:
                cache[image] = load(image)
                if progress is not None:
                    progress(1)
            images.append(cache[image])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bin(out_dir / f"{name}.bin", images, [p.same for p in pairs])
    atomic_write_text(out_dir / f"{name}.pairs.txt", pairs_text(pairs))
    convert_bin(out_dir / f"{name}.bin", out_dir)
    return out_dir / name
