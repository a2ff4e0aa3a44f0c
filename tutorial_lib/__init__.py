"""tutorial_lib: the finalized attention modules of the course "Attention in CNNs, derived",
and the small support code its notebooks share.

Mechanisms (one file each, one notebook each):
    SqueezeExcitation                           se.py          notebook 01
    ChannelAttention, SpatialAttention, CBAM    cbam.py        notebook 02
    NonLocalBlock                               non_local.py   notebook 03

Support: checks (shape checks, clear errors), data (offline synthetic data with ground
truth), training (fit / evaluate), plotting, cost (parameters, FLOPs, latency, memory),
notebook (set-up), capture (attention maps without hooks), exercises (checkers).
"""
import os as _os

# Must happen before torch is imported: OpenMP's busy-waiting makes torch several times
# slower when the 2 cores of a laptop or CI machine are shared with another process.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .capture import AttentionModule, capture_attention  # noqa: E402
from .checks import ShapeError, check_shape, describe_shape, show_shape  # noqa: E402
from .cost import (count_flops, count_parameters, format_bytes, format_count,  # noqa: E402
                   measure_latency, peak_memory)
from .data import (FEATURE_NAMES, LabelledImages, attention_on_mask, channel_signal, handmade_features,  # noqa: E402
                   objects_on_clutter, sample_image)
from .notebook import setup_notebook  # noqa: E402
from .plotting import plot_curves, show_attention, show_images  # noqa: E402
from .training import History, evaluate, fit  # noqa: E402
# mechanisms
from .se import SqueezeExcitation  # noqa: E402
from .cbam import CBAM, ChannelAttention, SpatialAttention  # noqa: E402
from .non_local import NonLocalBlock  # noqa: E402
# (end of mechanisms)

__version__ = "0.1.0"

__all__ = [
    # mechanisms
    "SqueezeExcitation",
    "ChannelAttention", "SpatialAttention", "CBAM",
    "NonLocalBlock",
    # (end of mechanism names)
    # support
    "AttentionModule", "capture_attention",
    "ShapeError", "check_shape", "describe_shape", "show_shape",
    "count_flops", "count_parameters", "format_bytes", "format_count", "measure_latency", "peak_memory",
    "FEATURE_NAMES", "LabelledImages", "attention_on_mask", "channel_signal", "handmade_features",
    "objects_on_clutter", "sample_image",
    "setup_notebook",
    "plot_curves", "show_attention", "show_images",
    "History", "evaluate", "fit",
]
