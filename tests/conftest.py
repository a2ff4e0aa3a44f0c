"""Shared test set-up: quiet OpenMP waiting before torch loads, a fixed thread count."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import torch  # noqa: E402

torch.set_num_threads(2)
