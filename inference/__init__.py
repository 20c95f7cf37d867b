"""Running trained models: one loader for every consumer, their input conventions, embedding.

`inference.loader.load_model` opens a weights file (ours, TreB1eN's, arcface_torch's) for eval.py,
lfw_eval.py, megaface.py and training's `--pretrained`; `inference.conventions` is the one home of the
input conventions (channel order, mean, std, size) and of the uint8 -> model-input conversion;
`inference.embedding` turns uint8 images into L2-normalised embeddings. See ARCHITECTURE.md.
"""
