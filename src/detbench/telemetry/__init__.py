"""Measuring a run the way the 2020 study did (/usr/bin/time -v, nvprof), with today's tools.

- :mod:`.resources`: wall, user and system seconds, % CPU and max RSS of the train job;
- :mod:`.nvml`: GPU telemetry sampled through NVML (utilisation, memory, power, energy...);
- :mod:`.monitor`: both, for a train job, kept across resumed segments;
- :mod:`.provenance`: host, GPU, driver, CUDA, torch, git commit, config hash, seed.

- :mod:`.kernels`: the profile stage, torch.profiler over real training steps (the word
  "profile" otherwise means a Snakemake profile, ``profiles/``).

``kernels`` builds on the training engine, which imports this package: so it is not imported
here, and the training engine may import everything here but ``kernels``.
"""

from detbench.telemetry.monitor import TrainMonitor
from detbench.telemetry.provenance import cell_provenance, run_provenance

__all__ = ["TrainMonitor", "cell_provenance", "run_provenance"]
