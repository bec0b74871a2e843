"""Exporting finished cells to the tools people compare runs in: MLflow and TensorBoard.

- ``settings``: the config's ``tracking`` section resolved (tracking URI, experiment name, what
  to export) and the check that the optional packages are there; no import of either tool;
- ``record``: what one cell exports (params, final metrics, per-epoch history, tags,
  artifacts), read from its files through the summary's own row so the two always agree;
- ``mlflow_export``: one MLflow run per cell, found again by the cell's id, so re-exporting
  never duplicates it; imports ``mlflow``;
- ``tensorboard_export``: an events file per cell from its ``history.csv``; imports
  ``tensorboard``'s writer and protobufs only (no torch, no TensorFlow).
- ``export``: a track job, one cell into the tools the config names, and its receipt.

``mlflow`` and ``tensorboard`` come with the optional extra ``tracking`` and are imported only
inside the two export modules, which only the track rule's script imports. May import
``study``, ``summary``, ``errors`` and ``atomic``; never ``training`` or torch.
"""
