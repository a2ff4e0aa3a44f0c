"""tutorial_lib: the finalized attention modules of the course "Attention in CNNs, derived",
and the small support code its notebooks share.

Mechanisms (one file each, one notebook each):
    SqueezeExcitation                           se.py          notebook 01
    ChannelAttention, SpatialAttention, CBAM    cbam.py        notebook 02
    NonLocalBlock                               non_local.py   notebook 03
    InteractionAwareAttention, l_interactive,   interaction.py notebook 03
      l_attn
    RGA                                         rga.py         notebook 04
    CSRA, MultiHeadCSRA                         csra.py        notebook 05
    TrilinearAttention, AttentionSampler,       tasn.py        notebook 06
      structure_map, detail_map, distillation_loss
    DoubleAttention                             a2net.py       notebook 07
    (all of them side by side: zoo.py, notebook 08)

Support: checks (shape checks, clear errors), claims (results over seeds, paired
comparisons, one rule for a verdict, assertions of what the text claims), data (offline synthetic data with ground
truth), metrics (mean average precision), training (fit / evaluate / seeds), plotting, cost
(parameters, FLOPs, latency, memory), notebook (set-up), capture (attention maps without
hooks), exercises (checkers, student copies, progress).

Importing the package loads torch, einops and numpy only: the plotting stack (matplotlib)
and the training loop load on first use of one of their names (``tl.show_images``,
``tl.fit``, ...), so a program that only wants a module does not pay for them.
"""
from . import _environment

# Before torch is imported: keep OpenMP threads from busy-waiting (nothing else is changed).
_environment.prepare()

from .capture import AttentionModule, capture_attention  # noqa: E402
from .claims import (RULE, ClaimError, Paired, claim, compare, format_mean_spread, mean_spread,  # noqa: E402
                     results_table, seeds)
from .checks import ShapeError, check_shape, describe_shape, show_shape  # noqa: E402
from .cost import (count_flops, count_parameters, format_bytes, format_count,  # noqa: E402
                   measure_latency, peak_memory)
from .data import (FEATURE_NAMES, LabelledImages, MultiLabelImages, TileMatching, attention_on_mask,  # noqa: E402
                   beacon_lookup, channel_signal, fine_grained_details, handmade_features, matching_tiles,
                   objects_on_clutter, objects_on_clutter_multilabel, odd_one_out, OddOneOutImages, sample_image)
from .metrics import mean_average_precision  # noqa: E402
from .notebook import setup_notebook  # noqa: E402
# mechanisms
from .se import SqueezeExcitation  # noqa: E402
from .cbam import CBAM, ChannelAttention, SpatialAttention  # noqa: E402
from .non_local import NonLocalBlock  # noqa: E402
from .interaction import InteractionAwareAttention, l_attn, l_interactive  # noqa: E402
from .rga import RGA  # noqa: E402
from .csra import CSRA, MultiHeadCSRA  # noqa: E402
from .tasn import AttentionSampler, TrilinearAttention, detail_map, distillation_loss, structure_map  # noqa: E402
from .a2net import DoubleAttention  # noqa: E402
# (end of mechanisms)

__version__ = "0.1.0"

# Support names whose modules load on first use (PEP 562): name -> submodule.
_LAZY = {
    "plot_curves": "plotting", "show_attention": "plotting", "show_images": "plotting",
    "History": "training", "evaluate": "training", "fit": "training",
    "recalibrate_batchnorm": "training",
}

__all__ = [
    # mechanisms
    "SqueezeExcitation",
    "ChannelAttention", "SpatialAttention", "CBAM",
    "NonLocalBlock",
    "InteractionAwareAttention", "l_interactive", "l_attn",
    "RGA",
    "CSRA", "MultiHeadCSRA",
    "TrilinearAttention", "AttentionSampler", "structure_map", "detail_map", "distillation_loss",
    "DoubleAttention",
    # (end of mechanism names)
    # support
    "AttentionModule", "capture_attention",
    "ShapeError", "check_shape", "describe_shape", "show_shape",
    "count_flops", "count_parameters", "format_bytes", "format_count", "measure_latency", "peak_memory",
    "FEATURE_NAMES", "LabelledImages", "MultiLabelImages", "attention_on_mask", "beacon_lookup", "channel_signal",
    "fine_grained_details", "handmade_features", "objects_on_clutter", "objects_on_clutter_multilabel",
    "sample_image", "mean_average_precision", "TileMatching", "matching_tiles",
    "OddOneOutImages", "odd_one_out",
    "setup_notebook",
    "RULE", "ClaimError", "Paired", "claim", "compare", "mean_spread", "format_mean_spread", "results_table", "seeds",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tutorial_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
