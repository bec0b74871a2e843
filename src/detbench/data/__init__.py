"""Datasets: the synthetic blood-smear set, VOC import, VOC -> YOLO labels and manifest."""
