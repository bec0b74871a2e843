"""Training one cell: the epoch loop and everything it runs on.

- ``train``: a train job from its settings to its outputs (read it top to bottom);
- ``engine``: the state a checkpoint restores, one optimizer step, one epoch;
- ``loss``, ``optim``: the YOLOv3 loss; SGD, the learning-rate schedule and the EMA;
- ``checkpoint``: resume state, written atomically;
- ``distributed``, ``launch``: several ranks per cell (torch.distributed, elastic launch);
- ``device``, ``allocator``: the compute device and AMP; glibc's allocator settings;
- ``timing``: where a train job's time went.

May import ``data``, ``models``, ``evaluation``, ``telemetry``, ``study`` and ``cluster.srun``.
"""
