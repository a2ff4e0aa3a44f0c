"""Exercises of notebook 05 (CSRA, class-specific residual attention).

Every checker builds its reference from ``tutorial_lib.CSRA`` / ``MultiHeadCSRA`` on inputs the
notebook did not show, and none prints the value it compares with.
"""
from __future__ import annotations

import math

import torch

from ..csra import CSRA, MultiHeadCSRA
from .core import exercise, expect_close, expect_prediction, random_input

INF = float("inf")


def object_logit_of_four_heads(side: int = 8, cells: int = 4, score: float = 3.0, lam: float = 0.5) -> float:
    """The logit of ``MultiHeadCSRA(1, 1, num_heads=4, lam)`` (T = 1, 2, 4, inf) with the same unit
    classifier in every head, on a ``side`` x ``side`` map whose score is ``score`` at ``cells``
    positions and 0 elsewhere, measured with the module."""
    x = torch.zeros(1, 1, side * side, dtype=torch.float64)
    x[0, 0, :cells] = score
    mha = MultiHeadCSRA(1, 1, 4, lam=lam).double()
    with torch.no_grad():
        mha.weight.fill_(1.0)  # every head's classifier is the unit vector: the score is the feature
        return mha(x.view(1, 1, side, side))[0, 0].item()


@exercise("05.1", "predict: the logit of the official four heads on a four-cell object",
          hint="every head adds its own base term (the mean over all 64 positions) and λ times its own "
               "attention logit; at T = 1 the 60 empty positions still take a large share of the softmax, "
               "at T = 4 and ∞ almost none")
def _check_prediction(prediction):
    expect_prediction(prediction, object_logit_of_four_heads(), "logit of the four-head model", rel=0.05)


def _masked_reference(x, valid, m, temperature, lam):
    """tl.CSRA on each image's valid positions alone (a (1, d, 1, n) map: CSRA ignores the layout)."""
    csra = CSRA(m.shape[1], m.shape[0], temperature=temperature, lam=lam).to(x.dtype)
    with torch.no_grad():
        csra.head.weight.copy_(m[:, :, None, None])
        rows = [csra(x[b][:, valid[b]][None, :, None, :]) for b in range(x.shape[0])]
    return torch.cat(rows)


@exercise("05.2", "CSRA on a padded batch: only the valid positions count",
          hint="every reduction over positions (the mean, the softmax and the max) must see the valid "
               "positions only: a padded position gets zero weight, which is not the same as a zero score")
def _check_masked(fn):
    b, d, k, h, w = 3, 6, 4, 5, 7
    m = random_input(k, d, seed=61, dtype=torch.float64) * 2
    valid = torch.zeros(b, h, w, dtype=torch.bool)
    valid[0], valid[1, :3, :4], valid[2, :2, :5] = True, True, True   # a full image and two smaller ones
    for case, seed in (("random features", 62), ("every valid score negative", 63)):
        x = random_input(b, d, h, w, seed=seed, dtype=torch.float64)
        if case == "every valid score negative":   # positive classifiers, negative features: a zero scores higher
            m, x = m.abs() + 0.1, -(x.abs() + 0.1)
        for padding in ("zeros", "what the backbone computed there"):
            xp = x.clone()
            if padding == "zeros":
                xp = xp * valid[:, None]
            for temperature, lam in ((1.0, 0.1), (3.0, 0.5), (INF, 0.2)):
                expected = _masked_reference(xp, valid, m, temperature, lam)
                expect_close(fn(xp, valid, m, temperature, lam), expected,
                             f"masked_csra (padding: {padding}; {case}; T={temperature}, lam={lam})",
                             atol=1e-8, rtol=1e-6)


@exercise("05.3", "find the bug: a port in the (batch, position, class) layout",
          hint="for each reduction, ask which numbers it runs over and compare with the equations: one "
               "class's weight vector for the normalisation, one class's map for the mean and the softmax")
def _check_fixed_port(fn):
    for (b, d, k, h, w), seed in (((2, 8, 5, 4, 4), 64), ((3, 3, 1, 2, 6), 65), ((1, 16, 7, 7, 7), 66)):
        x = random_input(b, d, h, w, seed=seed, dtype=torch.float64)
        weight = random_input(k, d, seed=seed + 10, dtype=torch.float64) * torch.linspace(0.5, 3.0, k,
                                                                                         dtype=torch.float64)[:, None]
        for temperature, lam in ((1.0, 0.1), (4.0, 0.3), (0.5, 1.0)):
            csra = CSRA(d, k, temperature=temperature, lam=lam).double()
            with torch.no_grad():
                csra.head.weight.copy_(weight[:, :, None, None])
                expected = csra(x)
            expect_close(fn(x, weight, temperature, lam), expected,
                         f"csra_port(x {tuple(x.shape)}, weight {tuple(weight.shape)}, T={temperature}, lam={lam})",
                         atol=1e-9, rtol=1e-6)


def _peak_share(n_positions: int, peak: float, temperature: float) -> float:
    """The attention weight that tl.CSRA puts on one position of score ``peak`` among zeros."""
    x = torch.zeros(1, 1, 1, n_positions, dtype=torch.float64)
    x[0, 0, 0, 0] = peak
    csra = CSRA(1, 1, temperature=temperature).double()
    with torch.no_grad():
        csra.head.weight.fill_(1.0)
        _, maps = csra(x, return_attention=True)
    return maps["attention"][0, 0, 0, 0].item()


@exercise("05.4", "the temperature that puts a given share of the attention on one peak",
          hint="write the softmax weight of the peak with the other positions' scores equal to zero, "
               "set it equal to the share and solve for T; the peak is one of the n positions")
def _check_temperature(fn):
    for n, peak, share in ((49, 2.0, 0.5), (64, 3.0, 0.9), (196, 1.5, 0.25), (16, 0.5, 0.75), (5, 4.0, 0.3)):
        got = fn(n, peak, share)
        what = f"temperature_for_share(n_positions={n}, peak={peak}, share={share})"
        assert isinstance(got, (int, float, torch.Tensor)) and not isinstance(got, bool), \
            f"{what} should be a number, but it is {type(got).__name__}"
        got = float(got)
        assert math.isfinite(got) and got >= 0, f"{what} should be a finite temperature >= 0, but it is {got:.4g}"
        measured = _peak_share(n, peak, got)
        if abs(measured - share) > 1e-6:
            side = "high" if measured > share else "low"
            raise AssertionError(f"{what}: with your T = {got:.4g} tl.CSRA puts {measured:.4f} of the attention on "
                                 f"the peak, not {share}: your T is too {side}")
