"""Progress bars that fit where the code runs: a widget bar in a Jupyter kernel with ipywidgets, else plain text.

``tqdm.auto`` makes the same choice, but in a kernel without ipywidgets it first warns
``TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.``, which a student reads as a failure
and which says nothing they need to act on: the text bar that follows works. This module makes the choice quietly.

ipywidgets is deliberately not a pinned dependency (Colab ships it; a local Jupyter may add it). Measured with
ipywidgets 8.1.9 on notebook 01 run by papermill: a widget bar's only text is its state when first shown, so the
CLI's log and the executed notebook outside Jupyter showed ``augment:   0%| | 0/42`` for a finished loop, and the
bar needs the widget extension in the Jupyter server's environment too. The text bar shows the final count everywhere.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.std import tqdm as text_tqdm

__all__ = ["in_notebook_kernel", "progress_bar", "progress_bar_class"]


def in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, JupyterLab, papermill's kernels), not a terminal."""
    ipython = sys.modules.get("IPython")  # a kernel has imported IPython already; never import it ourselves
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too broken to ask counts as no kernel: the text bar works everywhere
        return False
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar_class() -> type[text_tqdm]:
    """The tqdm class for this process: ``tqdm.notebook.tqdm`` in a kernel with ipywidgets, else ``tqdm.std.tqdm``."""
    if not in_notebook_kernel():
        return text_tqdm
    # tqdm.notebook imports without warning; it sets IProgress to None when ipywidgets is missing or too old,
    # and only warns when a bar is created, which we then never do.
    from tqdm.notebook import IProgress, tqdm as notebook_tqdm

    return text_tqdm if IProgress is None else notebook_tqdm


def progress_bar(*args: Any, **kwargs: Any) -> text_tqdm:
    """A tqdm progress bar of the class :func:`progress_bar_class` picks; takes exactly tqdm's arguments.

    Example::

        for row in progress_bar(rows, total=len(rows), desc="augment", unit="slice"):
            ...
    """
    return progress_bar_class()(*args, **kwargs)
