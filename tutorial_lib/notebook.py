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
    * fixes torch's thread count: the ``COURSE_THREADS`` environment variable when it is set
      (the machine's choice wins, also over a notebook's own), else ``threads`` (a notebook
      whose tensors are too small to gain from a second thread asks for 1), else 2. The last
      bits of float results depend on the count, so a fixed one keeps printed numbers identical
      from run to run on one machine; across machines only exact outputs agree, and cells with
      trained numbers assert their claims instead (``tutorial_lib.claims``);
    * prints tensors with 3 decimals and no scientific notation (numpy likewise);
    * draws figures as PNG at a fixed size and resolution.

    ``OMP_WAIT_POLICY=PASSIVE`` (which keeps torch fast on a busy machine) must be set before
    torch is first imported: importing ``tutorial_lib`` first does that.
    """
    chosen = os.environ.get("COURSE_THREADS", "").strip()
    if chosen:
        try:
            threads = int(chosen)
        except ValueError:
            raise ValueError(f"setup_notebook: COURSE_THREADS must be a whole number, but it is {chosen!r}") from None
    elif threads is None:
        threads = DEFAULT_THREADS
    if threads < 1:
        raise ValueError(f"setup_notebook: expected a thread count >= 1, but got {threads}")
    torch.set_num_threads(threads)
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
