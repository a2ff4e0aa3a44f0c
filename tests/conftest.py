"""Shared test set-up: tutorial_lib's process settings before torch loads, a fixed thread count."""
import tutorial_lib  # noqa: F401  (first: quiet OpenMP waiting, one instruction set; see tutorial_lib/_environment.py)

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import torch  # noqa: E402

torch.set_num_threads(2)
