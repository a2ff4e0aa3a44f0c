"""One set-up call for every notebook: seeds, threads, print options, PNG figures."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["setup_notebook", "DEFAULT_THREADS"]

DEFAULT_THREADS = 2


def setup_notebook(seed: int = 0, threads: int | None = None) -> None:
    """Make a notebook's outputs reproducible and its figures light.

    * seeds Python's ``random``, numpy and torch with ``seed``;
    * fixes torch's thread count (``threads``, else the ``COURSE_THREADS`` environment
      variable, else 2): the last bits of float results depend on it, so a fixed count keeps
      printed numbers identical between runs;
    * prints tensors with 3 decimals and no scientific notation (numpy likewise);
    * draws figures as PNG at a fixed size and resolution.

    ``OMP_WAIT_POLICY=PASSIVE`` (which keeps torch fast on a busy machine) must be set before
    torch is first imported: importing ``tutorial_lib`` first does that.
    """
    if threads is None:
        threads = int(os.environ.get("COURSE_THREADS", DEFAULT_THREADS))
    torch.set_num_threads(max(1, threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_printoptions(precision=3, sci_mode=False, linewidth=100)
    np.set_printoptions(precision=3, suppress=True, linewidth=100)

    import matplotlib

    matplotlib.rcParams.update({
        "figure.dpi": 80,
        "savefig.dpi": 80,
        "figure.figsize": (8, 4),
        "image.interpolation": "nearest",
        "axes.titlesize": "medium",
    })
    try:  # inside IPython: PNG figures (nbval does not compare PNG; it does compare SVG)
        from IPython import get_ipython

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")
    except ImportError:  # plain Python: nothing to configure
        pass
