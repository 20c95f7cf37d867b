"""Faces in photos: detection (mtcnn.py), 5-point similarity alignment to the ArcFace template
(alignment.py) and head pose (pose.py). Each module is imported on its own (`from faces.alignment
import align_face`), so using one does not load the others' dependencies."""
