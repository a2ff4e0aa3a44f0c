"""DoubleAttention against a direct transcription of a correct public A²-Net block.

    .venv/bin/python benchmarks/bench_a2net.py            (or: make bench)
    .venv/bin/python benchmarks/bench_a2net.py --quick    (tiny sizes, a few seconds)

Both sides compute the same block with the same weights (checked before timing):

* reference: the public PyTorch re-implementation nguyenvo09/Double-Attention-Network
  (double_attention_layer.py, the version with ``reconstruct``), transcribed: three separate
  1x1 convolutions, ``view``, an explicit softmax over space for the attention maps and one over
  the descriptors for the attention vectors, ``bmm`` for the gather, ``matmul`` for the
  distribution, the reconstruction convolution; plus the residual X + (...) of the paper's block,
  which that code leaves to its caller;
* ``tl.DoubleAttention``: one fused embedding convolution; ``order="auto"`` takes the paper's
  order where it needs fewer multiply-adds (14x14 here) and otherwise moves W_φ and W_out onto the
  n descriptors, so that neither A nor Z is formed (the table says which order ran).

For each map size it measures, single-threaded by default, the median time of a forward pass
without gradients and of a forward + backward pass (the two sides alternate call by call, so
a change in machine load hits both), and the peak memory of a forward pass (rise of the
process's resident set, ``tutorial_lib.peak_memory``), next to the size of one float32 N x N
matrix per image of the batch: what a block that formed the N x N weights (the other order of
the same products, as a non-local block) would need at least. Timings vary from run to run and
machine to machine; run on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import tutorial_lib as tl  # noqa: I001  (first: process settings before torch loads)
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

MiB = 2 ** 20


class TranscribedReference(nn.Module):
    """The public block, step by step as written there (2-D), plus the residual."""

    def __init__(self, in_channels: int, c_m: int, c_n: int) -> None:
        super().__init__()
        self.c_m, self.c_n = c_m, c_n
        self.convA = nn.Conv2d(in_channels, c_m, kernel_size=1)
        self.convB = nn.Conv2d(in_channels, c_n, kernel_size=1)
        self.convV = nn.Conv2d(in_channels, c_n, kernel_size=1)
        self.conv_reconstruct = nn.Conv2d(c_m, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = self.convA(x).view(b, self.c_m, h * w)
        maps = F.softmax(self.convB(x).view(b, self.c_n, h * w), dim=-1)      # over space
        vectors = F.softmax(self.convV(x).view(b, self.c_n, h * w), dim=1)    # over the descriptors
        descriptors = torch.bmm(a, maps.permute(0, 2, 1))                     # (b, m, n)
        z = descriptors.matmul(vectors).view(b, self.c_m, h, w)               # (b, m, h, w)
        return x + self.conv_reconstruct(z)


def matched_pair(channels: int, c_m: int, c_n: int, seed: int = 0):
    """The reference and ``tl.DoubleAttention`` with the same weights."""
    torch.manual_seed(seed)
    reference = TranscribedReference(channels, c_m, c_n)
    block = tl.DoubleAttention(channels, c_m, c_n, zero_init=False)
    with torch.no_grad():
        block.embed.weight.copy_(torch.cat([reference.convA.weight, reference.convB.weight,
                                            reference.convV.weight]))
        block.embed.bias.copy_(torch.cat([reference.convA.bias, reference.convB.bias, reference.convV.bias]))
        block.out.weight.copy_(reference.conv_reconstruct.weight)
        block.out.bias.copy_(reference.conv_reconstruct.bias)
    return reference, block


def alternating_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, calling them in turn so that load changes hit all."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak(fn, tries: int = 2) -> float:
    """Smallest of a few peak-memory readings (the first call of a size may grow allocator pools)."""
    fn()
    readings = [tl.peak_memory(fn) for _ in range(tries)]
    if any(r is None for r in readings):
        return float("nan")
    return float(min(readings))


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor that any operation returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def square_tensors(module: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes with two axes of length N (= positions) formed in a forward + backward pass."""
    positions = x[0, 0].numel()
    xg = x.clone().requires_grad_()
    with ShapeRecorder() as recorder:
        module(xg).sum().backward()
    module.zero_grad(set_to_none=True)
    return [s for s in recorder.shapes if s.count(positions) >= 2]


def measure(reference: nn.Module, block: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    xg = x.clone().requires_grad_()

    def forward(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    def training(module):
        def run():
            xg.grad = None
            module.zero_grad(set_to_none=True)
            module(xg).sum().backward()
        return run

    out = {}
    fwd = alternating_medians({"ref": forward(reference), "ours": forward(block)}, repeats)
    train = alternating_medians({"ref": training(reference), "ours": training(block)}, repeats)
    for side in ("ref", "ours"):
        module = reference if side == "ref" else block
        out[f"fwd_time_{side}"] = fwd[side]
        out[f"train_time_{side}"] = train[side]
        out[f"fwd_mem_{side}"] = peak(forward(module))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--c-m", type=int, default=64)
    parser.add_argument("--c-n", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per side and measurement (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: checks that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.channels, args.c_m, args.c_n = 2, 16, 4, 4
        args.sizes, args.repeats = [6, 10], 3
    torch.set_num_threads(args.threads)
    reference, block = matched_pair(args.channels, args.c_m, args.c_n)
    print(f"tl.DoubleAttention vs transcribed public block: B={args.batch}, C={args.channels}, "
          f"m={args.c_m}, n={args.c_n}, float32, {args.threads} thread(s), median of {args.repeats}, "
          f"torch {torch.__version__}")
    head = (f"{'map':>7} {'N':>5} {'order':>7} | {'forward ms':^17} {'ratio':>5} | {'fwd+bwd ms':^17} "
            f"{'ratio':>5} | {'fwd peak MiB':^15} {'NxN MiB':>8}")
    lines = [head, "-" * len(head)]
    verdicts = []
    for size in args.sizes:
        x = torch.randn(args.batch, args.channels, size, size)
        with torch.no_grad():  # same function, same weights
            torch.testing.assert_close(block(x), reference(x), atol=1e-4, rtol=1e-4)
        n = size * size
        r = measure(reference, block, x, args.repeats)
        nxn = args.batch * n * n * 4 / MiB
        fwd_ratio = r["fwd_time_ours"] / r["fwd_time_ref"]
        train_ratio = r["train_time_ours"] / r["train_time_ref"]
        lines.append(
            f"{size:>3}x{size:<3} {n:>5} {block.order_for(n):>7} | "
            f"{r['fwd_time_ref'] * 1e3:>8.2f}/{r['fwd_time_ours'] * 1e3:<8.2f} {fwd_ratio:>5.2f} | "
            f"{r['train_time_ref'] * 1e3:>8.2f}/{r['train_time_ours'] * 1e3:<8.2f} {train_ratio:>5.2f} | "
            f"{r['fwd_mem_ref'] / MiB:>7.1f}/{r['fwd_mem_ours'] / MiB:<7.1f} {nxn:>8.1f}")
        verdicts.append((size, fwd_ratio, train_ratio, len(square_tensors(block, x))))
        print(f"  measured {size}x{size}", file=sys.stderr, flush=True)
    print("\n".join(lines))
    print("each pair: reference/tl.DoubleAttention; ratio = ours / reference (at most 1: no slower); "
          "NxN MiB = one float32 N x N matrix per image of the batch")
    print("\ntargets:")
    for size, fwd_ratio, train_ratio, squares in verdicts:
        speed = "met" if fwd_ratio <= 1 and train_ratio <= 1 else "NOT met"
        print(f"  {size}x{size}: no slower in either pass: {speed} (forward {fwd_ratio:.2f}, "
              f"forward+backward {train_ratio:.2f}); no N x N tensor in forward + backward: "
              f"{'met' if squares == 0 else 'NOT met'} ({squares} tensors with two axes of length N)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
