"""lungkit: a Keras 3 / TensorFlow, notebook-first reproduction kit for lung-cancer CT papers.

The package holds all logic; the notebooks in ``notebooks/`` tell the story and call it.
One subpackage or module per pipeline stage:

- ``lungkit.data``: readers (Lung-RADS pickles, phantom, volumes), the kit dataset format, splits.
- ``lungkit.preprocess`` / ``lungkit.augment`` / ``lungkit.pipeline``: from PNGs to model-ready tf.data.
- ``lungkit.models``: one file per architecture plus a registry.
- ``lungkit.losses`` / ``lungkit.metrics`` / ``lungkit.postprocess`` / ``lungkit.evaluation``.
- ``lungkit.training``: recipes -> compile/fit.
- ``lungkit.inference`` / ``lungkit.model_card`` / ``lungkit.predict`` / ``lungkit.serving``: applying a trained
  model (batching, sliding window), the card saved beside it, ``lungkit predict`` and ``lungkit export``.
- ``lungkit.papers`` / ``lungkit.reports``: reported tables as data, reproduced tables as files.

Importing lungkit first sets up TensorFlow's environment on a machine without an accelerator (see
``lungkit.device_env``): it has to happen before TensorFlow is imported, so it is the first thing the package does.
"""

from lungkit.device_env import quiet_cpu_tensorflow as _quiet_cpu_tensorflow

_quiet_cpu_tensorflow()

__version__ = "0.1.0"
