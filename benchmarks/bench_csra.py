"""MultiHeadCSRA (all heads in one convolution) against a per-head loop like the official MHA.

    .venv/bin/python benchmarks/bench_csra.py            (or: make bench)
    .venv/bin/python benchmarks/bench_csra.py --quick    (tiny sizes, a few seconds)

Both sides compute the same logits with the same weights (checked before timing):

* ``MultiHeadCSRA``: the finalized module; the classifiers of all heads are stacked into one
  (heads*K, d) weight, each class vector normalised, and ONE 1x1 convolution gives every
  head's per-position scores;
* per-head loop: what the official ``MHA`` of Kevinz-code/CSRA (``pipeline/csra.py``) does,
  written here on its own: one ``CSRA`` per head, each with its own 1x1 convolution, whose
  output is divided by the class weight norms at run time; the heads' logits are summed.

Settings of the paper's COCO model head: d = 2048 channels, K = 80 classes, batch 8, feature
maps 7x7 (224 input) and 14x14 (448 input), 1 and 4 heads, float32, ONE thread. Median times
of a forward pass without gradients and of a forward + backward pass (gradients for the
input and the weights), and the ratio fused / loop (below 1: the fused module is faster).
Targets: 1 head no slower (ratio <= 1 within noise); 4 heads at 14x14 forward + backward
<= 0.85. Timings vary from run to run and machine to machine; run on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import tutorial_lib as tl  # first: quiet OpenMP waiting, one instruction set (before torch loads)

import torch  # noqa: E402
from torch import nn  # noqa: E402

OFFICIAL_MAX = 99


class LoopHead(nn.Module):
    """One head as the official code computes it: conv, divide the output by the norms, pool."""

    def __init__(self, weight: torch.Tensor, temperature: float, lam: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
        self.temperature = OFFICIAL_MAX if temperature == float("inf") else temperature
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = torch.norm(self.conv.weight, dim=1, keepdim=True).transpose(0, 1)  # (1, K, 1, 1)
        score = (self.conv(x) / norms).flatten(2)                                   # (B, K, N)
        base = score.mean(dim=2)
        if self.temperature == OFFICIAL_MAX:
            att = torch.max(score, dim=2)[0]
        else:
            att = (score * torch.softmax(score * self.temperature, dim=2)).sum(dim=2)
        return base + self.lam * att


class LoopMHA(nn.Module):
    """The official multi-head form: one head module per temperature, logits summed."""

    def __init__(self, module: tl.MultiHeadCSRA) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            LoopHead(module.head_weight(h).detach()[..., None, None], t, module.lam)
            for h, t in enumerate(module.temperatures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = 0.0
        for head in self.heads:
            logit = logit + head(x)
        return logit


def interleaved_medians(fns: dict[str, object], repeats: int, clock) -> dict[str, float]:
    """Median time of each function by ``clock``, the functions called in turn in every round.

    Taking turns spreads the load of a busy machine evenly over the sides compared.
    """
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, clock) -> dict[str, float]:
    """Forward without gradients and forward + backward (input and weights), per model."""
    xg = x.clone().requires_grad_()

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    def training(model):
        def run():
            xg.grad = None
            model.zero_grad(set_to_none=True)
            model(xg).sum().backward()
        return run

    fns = {}
    for name, model in models.items():
        fns[f"fwd_{name}"] = forward(model)
        fns[f"train_{name}"] = training(model)
    return interleaved_medians(fns, repeats, clock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=2048, help="d, the backbone's output channels")
    parser.add_argument("--classes", type=int, default=80, help="K")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[7, 14])
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=21, help="timed calls per measurement (median)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock time (default) or the process's CPU time (steadier on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.classes, args.batch, args.sizes, args.repeats = 64, 10, 2, [4], 2
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"MultiHeadCSRA (fused) vs per-head loop (official MHA's work): d={args.channels}, K={args.classes}, "
          f"batch={args.batch}, float32, {args.threads} thread(s), {args.clock} time, median of {args.repeats}, "
          f"torch {torch.__version__}")
    head = (f"{'heads':>5} {'map':>7} | {'fwd ms loop/fused':>19} {'ratio':>6} | "
            f"{'fwd+bwd ms loop/fused':>22} {'ratio':>6} | {'fwd+bwd GFLOP loop/fused':>25} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    ratios = {}
    for n_heads in args.heads:
        fused = tl.MultiHeadCSRA(args.channels, args.classes, num_heads=n_heads, lam=0.5)
        loop = LoopMHA(fused)
        for size in args.sizes:
            x = torch.randn(args.batch, args.channels, size, size)
            xg = x.clone().requires_grad_()  # same function, same weights: logits and input gradients
            torch.testing.assert_close(fused(xg), loop(xg), rtol=1e-4, atol=1e-4)
            g_fused = torch.autograd.grad(fused(xg).sum(), xg)[0]
            g_loop = torch.autograd.grad(loop(xg).sum(), xg)[0]
            torch.testing.assert_close(g_fused, g_loop, rtol=1e-4, atol=1e-5)
            flops = {name: tl.count_flops(m, xg, backward=True) for name, m in (("loop", loop), ("fused", fused))}
            t = measure({"loop": loop, "fused": fused}, x, args.repeats, clock)
            r = (t["fwd_fused"] / t["fwd_loop"], t["train_fused"] / t["train_loop"])
            ratios[(n_heads, size)] = r
            print(f"{n_heads:>5} {size:>3}x{size:<3} | {1e3 * t['fwd_loop']:>9.2f}/{1e3 * t['fwd_fused']:<9.2f} "
                  f"{r[0]:>6.2f} | {1e3 * t['train_loop']:>11.2f}/{1e3 * t['train_fused']:<10.2f} {r[1]:>6.2f} | "
                  f"{flops['loop'] / 1e9:>12.3f}/{flops['fused'] / 1e9:<12.3f} {flops['fused'] / flops['loop']:>6.2f}")
    print("ratio = fused / loop (below 1: MultiHeadCSRA is faster); GFLOP as torch counts them "
          "(2 per multiply-add, matrix products only)")
    if args.quick:
        return 0
    print("\ntargets:")
    for (n_heads, size), (fwd, train) in sorted(ratios.items()):
        if n_heads == 1:
            ok = fwd <= 1.05 and train <= 1.05
            print(f"  1 head  {size}x{size}: fwd {fwd:.2f}, fwd+bwd {train:.2f} (target: no slower, "
                  f"<= 1.05 allowing for noise): {'met' if ok else 'NOT met'}")
        elif n_heads == 4 and size == 14:
            print(f"  4 heads 14x14: fwd+bwd {train:.2f} (target <= 0.85): {'met' if train <= 0.85 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
