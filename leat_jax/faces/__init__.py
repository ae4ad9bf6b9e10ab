"""Faces in photos: MTCNN detection (facenet-pytorch 2.6.0, real weights shipped).

``load_detector()`` gives a ``Detector`` with the weights in the package;
``Detector.detect(image)`` returns ``Faces(boxes, probs, landmarks)``, largest
face first. This room imports only ``leat_jax.models``.
"""
from leat_jax.faces.detect import DetectConfig, Detector, Faces, detect_faces, load_detector

__all__ = ["DetectConfig", "Detector", "Faces", "detect_faces", "load_detector"]
