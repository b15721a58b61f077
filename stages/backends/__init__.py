"""Optional execution backends: array-module helpers and adapters to other packages.

* :mod:`stages.backends.xp` — numpy/cupy selection from the input, GPU availability,
  counted and timed host↔device transfers;
* :mod:`stages.backends.nufft` — finufft or cufinufft plans for arrays of either device;
* :mod:`stages.backends.device_queue` — pinned buffers and streams overlapping copies;
* :mod:`stages.backends.httomolibgpu` — httomolibgpu methods, reached only through a
  guard that refuses to run without a CUDA device (httomolibgpu's silent "CPU mode");
* :mod:`stages.backends.tomopy` — TomoPy methods (TomoPy is not on PyPI: conda).

Nothing here imports cupy, httomolibgpu or tomopy at import time.
"""
