"""Readers of benchmarks' official files, one module per benchmark: each yields the images (or their
paths) and the protocol (pairs, folds, probe and gallery sets). Metrics stay in `verification` /
`identification`, commands at the root, so a new benchmark is one file here.

lfw_raw: LFW's pairs.txt and image folder; megaface: MegaFace challenge 1 (FaceScrub probes,
distractors, the devkit's lists, feature matrices and noise lists); ijb: IJB-B/C as insightface distributes
them (landmarks, templates and media, 1:1 pairs, 1:N galleries and probes); tinyface: TinyFace's folders and
.mat files.
"""
