"""Profiling a cell the way the 2020 study did (/usr/bin/time -v, nvprof), with today's tools.

- :mod:`.resources`: wall, user and system seconds, % CPU and max RSS of the train job;
- :mod:`.nvml`: GPU telemetry sampled through NVML (utilisation, memory, power, energy...);
- :mod:`.monitor`: both, for a train job, kept across resumed segments;
- :mod:`.provenance`: host, GPU, driver, CUDA, torch, git commit, config hash, seed.

The profile stage itself (torch.profiler over a few training steps) is
:mod:`detbench.kernel_profile`: it builds on the training engine, which imports this package.
"""

from detbench.profiling.monitor import TrainMonitor
from detbench.profiling.provenance import cell_provenance, run_provenance

__all__ = ["TrainMonitor", "cell_provenance", "run_provenance"]
