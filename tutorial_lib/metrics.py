"""Mean average precision (mAP), the score of multi-label recognition papers (VOC, COCO).

Definition used here: the non-interpolated average precision that the code of multi-label
papers computes (for example the official CSRA evaluation, Kevinz-code/CSRA
``utils/evaluation/cal_mAP.py``):

* for one class, rank the N images by their score for that class, highest first;
* at the rank of every positive image, take the precision of the top of the ranking down to
  that image (positives so far / images so far);
* the class's AP is the mean of those precisions over its positives (1.0 when every positive
  is ranked above every negative);
* mAP is the mean of the per-class APs over the classes that have at least one positive.

Ties: images with equal scores for a class cannot be ordered, so they are counted as one
block: every positive in the block gets the precision at the END of the block (the same
number whatever order the tied images came in; this is scikit-learn's
``average_precision_score``). A ranking code that sorts ties in input order instead gives
an order-dependent AP; without ties the two agree.

Classes without positives have no AP (precision at a positive is undefined): they are left
out of the mean (their per-class value is NaN). If no class has a positive, ``ValueError``.

Not the same as the VOC2007 devkit's 11-point interpolated AP or the VOC2010 devkit's AP of
the monotone (interpolated) precision curve: both replace each precision by the best
precision at a higher recall, so they are never lower than the value computed here.
"""
from __future__ import annotations

import torch

__all__ = ["mean_average_precision", "average_precision"]


def _check(name: str, scores: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    for what, t in (("scores", scores), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected {what} to be a torch.Tensor (N, K), but got {type(t).__name__}")
    if scores.dim() == 1 and targets.dim() == 1:  # one class
        scores, targets = scores[:, None], targets[:, None]
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(f"{name}: expected scores and targets of the same shape (N, K), but got "
                         f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, but got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.double()
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name}: expected finite scores, but got NaN or infinite values")
    if targets.dtype == torch.bool:
        binary = targets
    else:
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError(f"{name}: expected targets of 0 and 1 (multi-hot), but got other values "
                             f"(for example {targets[(targets != 0) & (targets != 1)][0].item()})")
        binary = targets == 1
    return scores.detach(), binary.detach()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision, (K,) float64; NaN for a class without positives.

    ``scores`` (N, K) (logits or probabilities: only the order matters), ``targets`` (N, K)
    of 0/1 (or bool). A 1-D pair is one class. See the module docstring for ties.
    """
    scores, positive = _check("average_precision", scores, targets)
    n = scores.shape[0]
    s = scores.double().T.contiguous()  # (K, N), one row per class
    pos = positive.T.double()
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    s_sorted = torch.gather(s, 1, order)
    hits = torch.cumsum(torch.gather(pos, 1, order), dim=1)  # positives in the top i + 1
    # the end of each image's tie block: the number of images scoring >= its score
    ascending = torch.flip(s_sorted, dims=[1]).contiguous()
    at_least = n - torch.searchsorted(ascending, s_sorted.contiguous(), right=False)  # (K, N)
    precision_at_block_end = torch.gather(hits, 1, at_least - 1) / at_least.double()
    n_pos = pos.sum(dim=1)
    ap = (precision_at_block_end * torch.gather(pos, 1, order)).sum(dim=1) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes (those with a positive) of the per-class average precision.

    ``scores`` (N, K) and ``targets`` (N, K) multi-hot; returns a float in [0, 1]. Usable as
    ``tl.fit(..., metric=tl.mean_average_precision, metric_name="mAP")``.
    """
    _check("mean_average_precision", scores, targets)
    ap = average_precision(scores, targets)
    have = ~torch.isnan(ap)
    if not have.any():
        raise ValueError("mean_average_precision: expected at least one class with a positive image, "
                         "but every class has none")
    return ap[have].mean().item()
