"""Serving a trained cell: ONNX export, inference backends and the inference benchmark stage.

- ``metadata``: what an exported ONNX model carries about itself (classes, input size, anchors,
  strides), read without torch;
- ``preprocess`` and ``nms``: the evaluation's letterbox and per-class NMS in numpy, so the
  ONNX Runtime path gives the evaluation's detections without torch;
- ``onnx_backend``: an exported model under ONNX Runtime (CPU, CUDA or TensorRT provider);
- ``torch_backend``: a trained cell's ``weights.pt`` under PyTorch (eager fp32, AMP on CUDA);
- ``export``: ``weights.pt`` or Darknet ``.weights`` to ``model.onnx`` (torch's dynamo exporter,
  a traced graph reused across a model's cells), checked against PyTorch before it is written;
- ``measure``: one backend's latency, throughput and memory in a process of its own;
- ``stage``: the ``benchmark_inference`` rule's work (every backend, agreement with PyTorch);
- ``summary_columns``: a cell's ``inference.json`` as summary.csv columns and their meaning.

May import ``errors``, ``atomic``, ``data`` (manifest, augment), ``evaluation`` (detections,
metrics; ``inference`` only in the torch modules), ``models`` and ``study``. ``metadata``,
``preprocess``, ``nms``, ``onnx_backend``, ``stage`` and ``summary_columns`` never import torch
(the ONNX Runtime serving path runs without it); ``export`` and ``torch_backend`` do, and
``measure`` only for a PyTorch backend.
"""
