"""The memory wall of the non-local block: NonLocalBlock against the explicit N x N form.

    .venv/bin/python benchmarks/bench_non_local.py            (or: make bench)
    .venv/bin/python benchmarks/bench_non_local.py --channels 256 --batch 1 --sizes 14 28 56

Both sides compute the same block with the same weights (checked before timing):

* ``NonLocalBlock``: the finalized module; its softmax runs on
  ``F.scaled_dot_product_attention``, which never stores the N x N̂ affinity;
* explicit: the textbook / official-code formulation, which builds the affinity
  A = θᵀφ (N x N̂), its softmax P, and y = g Pᵀ.

For each feature map from 14x14 to 64x64 it measures the median time and the peak memory
(rise of the process's resident set, ``tutorial_lib.peak_memory``) of a forward pass without
gradients (inference) and of a forward + backward pass (training), and prints the ratios
lean / explicit (below 1: the module is faster or lighter). The first table uses the default
block (2x2 sub-sampling of the keys, N̂ = N/4), the second the block without sub-sampling
(N̂ = N). Timings vary from run to run and machine to machine; run on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import torch  # noqa: E402
from einops import einsum, rearrange  # noqa: E402

import tutorial_lib as tl  # noqa: E402

MiB = 2 ** 20


def explicit_non_local(block: tl.NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The same block (embedded Gaussian, 2-D) with the N x N̂ affinity built explicitly."""
    x_hat = block.pool(x)
    theta = rearrange(block.theta(x), "b c h w -> b c (h w)")
    phi = rearrange(block.phi(x_hat), "b c h w -> b c (h w)")
    g = rearrange(block.g(x_hat), "b c h w -> b c (h w)")
    affinity = einsum(theta, phi, "b c n, b c m -> b n m")           # (B, N, N̂)
    weights = torch.softmax(affinity * block.affinity_scale, dim=-1)  # (B, N, N̂)
    y = einsum(g, weights, "b c m, b n m -> b c n")
    y = rearrange(y, "b c (h w) -> b c h w", h=x.shape[2])
    return x + block.bn(block.out(y))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak(fn, tries: int = 2) -> float:
    """Smallest of a few peak-memory readings (the first call of a size may grow allocator pools)."""
    fn()
    readings = [tl.peak_memory(fn) for _ in range(tries)]
    if any(r is None for r in readings):
        return float("nan")
    return float(min(readings))


def measure(block: tl.NonLocalBlock, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Time and peak memory of both forms, forward only and forward + backward."""
    xg = x.clone().requires_grad_()

    def forward(f):
        def run():
            with torch.no_grad():
                f(x)
        return run

    def training(f):
        def run():
            xg.grad = None
            block.zero_grad(set_to_none=True)
            f(xg).sum().backward()
        return run

    lean, explicit = block, (lambda t: explicit_non_local(block, t))
    out = {}
    for name, f in (("lean", lean), ("explicit", explicit)):
        out[f"fwd_time_{name}"] = median_time(forward(f), repeats)
        out[f"fwd_mem_{name}"] = peak(forward(f))
        out[f"train_time_{name}"] = median_time(training(f), repeats)
        out[f"train_mem_{name}"] = peak(training(f))
    return out


def table(title: str, rows: list[tuple[int, int, int, dict[str, float]]], batch: int) -> str:
    head = (f"{'map':>7} {'N':>5} {'N^':>5} {'A MiB':>6} | {'fwd ms':^15} {'ratio':>5} "
            f"{'fwd MiB':^13} {'ratio':>5} | {'fwd+bwd ms':^15} {'ratio':>5} {'fwd+bwd MiB':^13} {'ratio':>5}")
    lines = [title, head, "-" * len(head)]
    for size, n, m, r in rows:
        affinity = batch * n * m * 4 / MiB
        cells = [f"{size:>3}x{size:<3} {n:>5} {m:>5} {affinity:>6.1f} |"]
        for kind in ("fwd", "train"):
            te, tn = r[f"{kind}_time_explicit"] * 1e3, r[f"{kind}_time_lean"] * 1e3
            me, mn = r[f"{kind}_mem_explicit"] / MiB, r[f"{kind}_mem_lean"] / MiB
            cells.append(f"{te:>7.1f}/{tn:<7.1f} {tn / te:>5.2f} {me:>6.1f}/{mn:<6.1f} {mn / me:>5.2f}")
            if kind == "fwd":
                cells.append("|")
        lines.append(" ".join(cells))
    lines.append("each pair: explicit/NonLocalBlock; ratio = lean / explicit (below 1: NonLocalBlock is faster "
                 "or lighter); A MiB = bytes of one float32 affinity for the batch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64, help="C of the feature map (inner width C/2)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 32, 48, 56, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--no-full", action="store_true", help="skip the table without sub-sampling")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"NonLocalBlock (embedded Gaussian, SDPA) vs explicit N x N form: C={args.channels}, "
          f"inner={args.channels // 2}, batch={args.batch}, float32, {args.threads} threads, "
          f"torch {torch.__version__}")
    results = {}
    for sub_sample in (True, False) if not args.no_full else (True,):
        block = tl.NonLocalBlock(args.channels, sub_sample=sub_sample)
        rows = []
        for size in args.sizes:
            x = torch.randn(args.batch, args.channels, size, size)
            with torch.no_grad():  # same function, same weights
                torch.testing.assert_close(block(x), explicit_non_local(block, x))
            n = size * size
            m = n // 4 if sub_sample else n
            repeats = args.repeats if size <= 32 or sub_sample else max(2, args.repeats // 2)
            rows.append((size, n, (size // 2) ** 2 if sub_sample else m, measure(block, x, repeats)))
            print(f"  measured {size}x{size} (sub_sample={sub_sample})", file=sys.stderr, flush=True)
        title = ("\ndefault block (keys sub-sampled 2x2, N^ = N/4)" if sub_sample
                 else "\nwithout sub-sampling (N^ = N)")
        print(table(title, rows, args.batch))
        results[sub_sample] = rows

    at_64 = [r for size, _, _, r in results[True] if size == 64]
    if not at_64:
        return 0
    r = at_64[0]
    print("\ntarget at 64x64 (N = 4096), default block:")
    for kind, label in (("fwd", "forward"), ("train", "forward+backward")):
        mem = r[f"{kind}_mem_lean"] / r[f"{kind}_mem_explicit"]
        speed = r[f"{kind}_time_lean"] / r[f"{kind}_time_explicit"]
        print(f"  {label:<17} peak memory {mem:.2f} of explicit (target <= 0.25: "
              f"{'met' if mem <= 0.25 else 'NOT met'}); time {speed:.2f} of explicit "
              f"(target <= 1: {'met' if speed <= 1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
