"""Scoring a trained cell on a held-out split.

- ``inference``: network outputs to detections (confidence filter, per-class NMS) and loading
  a trained model's files, shared by evaluation, the benchmarks and the web app;
- ``metrics``: COCO-style metrics (pycocotools' COCOeval reproduced in numpy) and precision /
  recall at named confidences;
- ``evaluate``: one cell's evaluation (detections, metrics, losses);
- ``final_evaluation``: the train job's final evaluation, reused by the evaluate job.

May import ``data``, ``models`` and ``study``; never ``training``'s loop.
"""
