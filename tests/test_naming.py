"""inference/naming.py and faces.detection.match_boxes: carrying names between detection frames (`--every K`), on
frames whose faces a fake namer knows exactly."""
from __future__ import annotations

import numpy as np
import pytest

from faces.detection import match_boxes
from inference.naming import NamedFace, carried, name_frames


def test_match_boxes_pairs_the_best_overlaps_once():
    a = [[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]]
    b = [[21, 0, 31, 10], [1, 0, 11, 10], [0, 50, 10, 60]]
    assert sorted(match_boxes(a, b)) == [(0, 1), (1, 0)]
    assert match_boxes(a, []) == [] and match_boxes([], b) == []
    assert match_boxes([[0, 0, 10, 10]], [[5, 0, 15, 10]], min_iou=0.5) == []  # IoU 1/3


class MovingFaces:
    """Frame i (its first pixel holds i) shows face 'ann' at x = 4 i and, from frame 5 on, a stranger at x = 200."""

    def __init__(self):
        self.calls = []

    def __call__(self, frame):
        index = int(frame[0, 0, 0])
        self.calls.append(index)
        faces = [NamedFace(np.array([4.0 * index, 10, 4.0 * index + 40, 50]), "ann", 0.9)]
        if index >= 5:
            faces.append(NamedFace(np.array([200.0, 10, 240, 50]), "Unknown", 0.1))
        return faces


def frames(count):
    return [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize("every", [1, 3, 4])
def test_every_k_detects_every_kth_and_the_last_frame_and_carries_the_rest(every):
    namer = MovingFaces()
    out = list(name_frames(frames(11), namer, every))
    assert [index for index, _, _ in out] == list(range(11))           # every frame, once, in order
    assert namer.calls == sorted(set(range(0, 11, every)) | {10})      # the model ran on these only
    for index, frame, faces in out:
        assert int(frame[0, 0, 0]) == index
        ann = [f for f in faces if f.name == "ann"]
        assert len(ann) == 1 and ann[0].box[0] == pytest.approx(4.0 * index)  # linear motion is interpolated exactly
        assert all(f.detected == (index in namer.calls) for f in faces)
    reference = {index: sorted(f.name for f in faces) for index, _, faces in name_frames(frames(11), MovingFaces())}
    names = {index: sorted(f.name for f in faces) for index, _, faces in out}
    changed = [i for i in range(11) if names[i] != reference[i]]
    assert all(abs(i - 5) < every for i in changed)  # only around the stranger's arrival, by less than K frames


def test_an_unmatched_face_is_kept_up_to_half_way():
    before = [NamedFace(np.array([0.0, 0, 10, 10]), "ann", 0.8)]
    after = [NamedFace(np.array([2.0, 0, 12, 10]), "bob", 0.7), NamedFace(np.array([50.0, 0, 60, 10]), "cy", 0.6)]
    early, late = carried(before, after, 0.25), carried(before, after, 0.75)
    assert [f.name for f in early] == ["ann"] and early[0].box[0] == pytest.approx(0.5)
    assert [f.name for f in late] == ["bob", "cy"] and not any(f.detected for f in late)


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        list(name_frames(frames(2), MovingFaces(), 0))
