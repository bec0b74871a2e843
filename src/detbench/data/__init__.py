"""Datasets: downloads (BCCD, COCO by range), the synthetic blood-smear set, VOC import and
VOC -> YOLO conversion with its manifest, the training pipeline (augmentation, batches) and the
image caches, with what is planned from them before any job runs (``sizes``, ``cache_plan``).

May import ``errors`` and ``atomic``; never models, training or evaluation.
"""
