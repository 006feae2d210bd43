"""Run many: a grid of (benchmark file, grid cell, strategy, seed) jobs on a local pool, SLURM or Ray.

The runner (:mod:`lamm_cl.runner`) runs one job and knows nothing about where; this package
sits above it:

* :mod:`~lamm_cl.sweep.spec` -- the sweep file and its expansion into jobs (``sweep.json``);
* :mod:`~lamm_cl.sweep.state` -- job state and ``--status``, read from the output folder alone;
* :mod:`~lamm_cl.sweep.job` -- one job in whatever process a launcher gives it (log, state, resume);
* :mod:`~lamm_cl.sweep.driver` -- loading a sweep with its launcher's options checked
  (:func:`load_sweep`), and which jobs run, in two phases (image features once, then jobs);
* ``launch_<name>`` -- one small module per engine (``local``, ``slurm`` via submitit, ``ray``);
* :mod:`~lamm_cl.sweep.cost` -- the ``--dry-run`` estimate; :mod:`~lamm_cl.sweep.calibrate` -- its
  per-unit seconds measured on this machine (``--calibrate``); :mod:`~lamm_cl.sweep.table` -- the
  cross-dataset table of ``lamm-cl report SWEEP_OUTPUT``.

Importing it imports neither torch nor a launcher's engine.
"""
from lamm_cl.sweep.driver import load_sweep
from lamm_cl.sweep.spec import Job, Sweep, is_sweep_output, read_sweep

__all__ = ["Job", "Sweep", "is_sweep_output", "load_sweep", "read_sweep"]
