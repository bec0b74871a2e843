"""detbench: a reproducible benchmark of YOLOv3 / YOLOv3-tiny training across platforms."""

__version__ = "0.1.0"
