"""Attention maps for plotting, without hooks.

The convention every mechanism module follows:

* ``module(x, return_attention=True)`` returns ``(output, maps)``, where ``maps`` is a dict of
  named tensors (for example ``{"channel": (B, C, 1, 1), "spatial": (B, 1, H, W)}``);
* inside a larger network, where the call cannot be changed, ``capture_attention(net)``
  collects the same dicts from every attention module it contains, during one forward pass.

A module opts in by subclassing ``AttentionModule`` and calling ``self._record(maps)`` in its
forward pass. Nothing is kept unless a capture is active, so there is no memory cost otherwise.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["AttentionModule", "capture_attention"]


class AttentionModule(nn.Module):
    """Base class of the course's attention modules: records maps while a capture is active."""

    _capture: dict[str, dict[str, torch.Tensor]] | None = None
    _capture_name: str = ""

    @property
    def capturing(self) -> bool:
        """True while ``capture_attention`` is collecting this module's maps."""
        return self._capture is not None

    def _record(self, maps: dict[str, torch.Tensor]) -> None:
        if self._capture is not None:
            self._capture[self._capture_name] = {k: v.detach() for k, v in maps.items()}


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Collect the attention maps of every ``AttentionModule`` inside ``model``.

    >>> with capture_attention(net) as maps:
    ...     net(images)
    >>> maps["block2.cbam"]["spatial"].shape

    Keys are the modules' qualified names (``""`` when ``model`` itself is the module); the
    values are the dicts the modules return with ``return_attention=True``, detached.
    """
    store: dict[str, dict[str, torch.Tensor]] = {}
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionModule)]
    if not found:
        raise ValueError(f"capture_attention: expected a model containing at least one tutorial_lib "
                         f"attention module, but {type(model).__name__} contains none")
    for name, m in found:
        m._capture, m._capture_name = store, name
    try:
        yield store
    finally:
        for _, m in found:
            m._capture, m._capture_name = None, ""
