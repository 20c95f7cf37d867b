"""Faces in photos: detection (mtcnn.py, yunet.py), 5-point similarity alignment to the ArcFace template
(alignment.py), head pose from landmarks (pose.py), the one photo -> aligned-face path every command takes
(pipeline.py) and whole folders of photos (folder.py, align.py's library). Each module is imported on its own
(`from faces.alignment import align_face`), so using one does not load the others' dependencies."""
