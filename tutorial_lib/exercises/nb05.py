"""Exercises of notebook 05 (CSRA, class-specific residual attention).

Every checker builds its reference from ``tutorial_lib.CSRA`` / ``MultiHeadCSRA`` or from
counts on real modules, on inputs the notebook did not show.
"""
from __future__ import annotations

import math

import torch

from ..cost import count_flops, count_parameters
from ..csra import CSRA, MultiHeadCSRA
from .core import exercise, expect_close, expect_prediction, random_input

INF = float("inf")


def one_peak_attention_logit(n_positions: int = 49, peak: float = 2.0, temperature: float = 1.0) -> float:
    """The attention logit of CSRA for one class whose normalised score is ``peak`` at one
    position and 0 at the others, measured with ``tutorial_lib.CSRA`` (λ = 1, so the logit
    minus the mean score is the attention logit)."""
    side = math.isqrt(n_positions)
    x = torch.zeros(1, 1, side, n_positions // side, dtype=torch.float64)
    x[0, 0, 0, 0] = peak
    csra = CSRA(1, 1, temperature=temperature, lam=1.0).double()
    with torch.no_grad():
        csra.head.weight.fill_(1.0)  # a unit vector: the score is the feature itself
        logit = csra(x)[0, 0].item()
    return logit - peak / n_positions


@exercise("05.1", "predict: the attention logit of one peak among 49 positions at T = 1",
          hint="the softmax runs over all 49 positions and the 48 zero scores still get weight e^0 each: "
               "the attention logit is a weighted average of the scores, not their maximum")
def _check_prediction(prediction):
    expect_prediction(prediction, one_peak_attention_logit(), "attention logit at T = 1", rel=0.1)


def _tokens_reference(tokens, m, temperature, lam):
    n = tokens.shape[1] - 1
    x = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], 1, n)
    csra = CSRA(m.shape[1], m.shape[0], temperature=temperature, lam=lam).to(tokens.dtype)
    with torch.no_grad():
        csra.head.weight.copy_(m[:, :, None, None])
        return csra(x)


@exercise("05.2", "CSRA on transformer tokens (class token first)",
          hint="the positions are the patch tokens only (the class token at index 0 is not a position); "
               "normalise each class's weight vector over the feature axis; the softmax runs over positions")
def _check_tokens(fn):
    b, d, k = 2, 6, 3
    m = random_input(k, d, seed=51) * 3
    for n, seed in ((9, 52), (14, 53)):
        tokens = random_input(b, 1 + n, d, seed=seed, dtype=torch.float64)
        tokens[:, 0] += 10.0  # a loud class token: using it as a position changes the result
        for temperature, lam in ((1.0, 0.1), (3.0, 0.5), (INF, 0.2)):
            expected = _tokens_reference(tokens, m.double(), temperature, lam)
            expect_close(fn(tokens, m.double(), temperature, lam), expected,
                         f"csra_tokens(tokens of shape {(b, 1 + n, d)}, m, T={temperature}, lam={lam})",
                         atol=1e-8, rtol=1e-6)


@exercise("05.3", "fix the port: the heads' temperature settings",
          hint="compare the port head by head with the finalized module at the official temperatures: "
               "which head differs, and what does the official code do with that head's temperature?")
def _check_fixed_heads(fn):
    d, k = 8, 5
    # small feature values: the normalised scores are of the order of 0.01, where T = 99 is far from max
    x = random_input(3, d, 4, 4, seed=54, dtype=torch.float64) * 0.01
    for heads, seed in ((2, 55), (4, 56), (6, 57)):
        weights = random_input(heads, k, d, seed=seed, dtype=torch.float64)
        mha = MultiHeadCSRA(d, k, heads, lam=0.5).double()
        with torch.no_grad():
            mha.weight.copy_(weights.reshape(heads * k, d, 1, 1))
            expected = mha(x)
        expect_close(fn(x, weights, 0.5), expected, f"multi_head_logits(x, weights of {heads} heads, lam=0.5)",
                     atol=1e-9, rtol=1e-6)


@exercise("05.4", "cost of a multi-head CSRA: parameters and multiply-adds",
          hint="which tensors of the head hold parameters (is there a bias?), and in one forward pass on one "
               "image, how many times is each weight multiplied with a feature?")
def _check_cost(fn):
    for d, k, heads, h, w in ((2048, 80, 4, 14, 14), (768, 14, 1, 14, 14), (512, 20, 6, 7, 9), (64, 3, 8, 5, 5)):
        module = MultiHeadCSRA(d, k, heads)
        params = count_parameters(module)
        multiply_adds = count_flops(module, torch.zeros(1, d, h, w)) // 2
        got = fn(d, k, heads, h, w)
        assert isinstance(got, tuple) and len(got) == 2, \
            f"return a pair (parameters, multiply_adds), but got {type(got).__name__}"
        for what, mine, counted in (("parameter count", got[0], params), ("multiply-add count", got[1], multiply_adds)):
            # say which way it is off, not the counted number: that would hand out the answer
            assert isinstance(mine, (int, float)) and not isinstance(mine, bool), \
                f"the {what} should be a number, but it is {type(mine).__name__}"
            assert mine == counted, (f"for MultiHeadCSRA({d}, {k}, num_heads={heads}) on a 1 x {d} x {h} x {w} input "
                                     f"your {what} ({mine}) is too {'high' if mine > counted else 'low'} "
                                     f"(the checker counts on the real module)")
