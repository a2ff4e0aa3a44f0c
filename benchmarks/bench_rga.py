"""RGA's relation embedding: the default (factored, no N x N tensor) against the literal mode.

    .venv/bin/python benchmarks/bench_rga.py                  (or: make bench)
    .venv/bin/python benchmarks/bench_rga.py --quick          (tiny sizes, a few seconds)
    .venv/bin/python benchmarks/bench_rga.py --branches S --sizes 28 56

Both sides are ``tutorial_lib.RGA`` with the same weights (the outputs are checked equal before
timing); they differ only in how the relation embedding (the 1x1 conv over the 2N stacked
relations, and over the 2C channel relations) is computed:

* literal (``relation="literal"``): what the official code does — build the B x N x N relation
  matrix, stack it with its transpose into a B x 2N x H x W tensor, convolve. O(N³) time,
  O(N²) memory;
* factored (the default): the same numbers from the (C/8 x N/8) products Φ W_inᵀ and Θ W_outᵀ,
  O(N²·C/8) time, no N x N tensor.

For each feature map (default 14x14 to 64x64, batch 8, C = 256, float32, one thread) it
measures the median time of a forward pass without gradients (eval mode) and of a forward +
backward pass (training mode), and the peak memory of both (rise of the process's resident
set, ``tutorial_lib.peak_memory``), and prints the ratios factored / literal (below 1: the
default is faster or lighter). ``--branches SC`` (the default module, both branches) and ``S``
(spatial branch only, where the relation embedding is nearly all of the work). Literal runs
whose estimated memory exceeds ``--max-literal-gib`` are skipped and reported as such.
Timings vary from run to run and machine to machine; run on a quiet machine.

Peak memory is the rise of the resident set, read twice. First with glibc's defaults, next to
the timings: malloc then keeps freed blocks below a dynamic threshold (which grows up to 32 MiB)
in its heap instead of returning them, so the reading also counts memory already freed — more
so for the default mode, whose buffers are mostly of that size (the literal mode's big
relation tensors are always returned). Then, after all timings (the setting slows allocation),
with that threshold set to 1 MiB (``mallopt(M_MMAP_THRESHOLD)``, glibc only), so that freed
blocks go back to the system and the reading follows the memory the module holds
(``--keep-allocator`` skips this second reading). The verdict on memory uses the second.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import statistics
import sys
import time

import tutorial_lib as tl  # first: pins the instruction set and quiet OpenMP waiting before torch loads

import torch  # noqa: E402

MiB, GiB = 2 ** 20, 2 ** 30
BRANCHES = {"SC": dict(), "S": dict(use_channel=False), "C": dict(use_spatial=False)}


def set_mmap_threshold(nbytes: int) -> str:
    """Make glibc return freed blocks of ``nbytes`` or more to the system (what the memory reading shows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(-3, nbytes) == 1:  # M_MMAP_THRESHOLD
            return f"mmap threshold {nbytes // 2 ** 20} MiB"
    except (OSError, AttributeError):
        pass
    return "defaults (mallopt not available)"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak(fn) -> float:
    """Smallest of two readings (the first call of a size may grow the allocator's pools)."""
    readings = [tl.peak_memory(fn) for _ in range(2)]
    return float("nan") if any(r is None for r in readings) else float(min(readings))


def literal_bytes(batch: int, n: int, use_spatial: bool) -> int:
    """Rough training footprint of the literal spatial relation tensors: R, [Rᵀ; R] and their gradients."""
    return 6 * batch * n * n * 4 if use_spatial else 0


def measure(module: tl.RGA, x: torch.Tensor, repeats: int) -> dict[str, float]:
    xg = x.clone().requires_grad_()

    def forward():
        module.eval()
        with torch.no_grad():
            module(x)

    def training():
        module.train()
        xg.grad = None
        module.zero_grad(set_to_none=True)
        module(xg).sum().backward()

    return {"fwd_time": median_time(forward, repeats), "fwd_mem": peak(forward),
            "train_time": median_time(training, repeats), "train_mem": peak(training)}


def build_pair(branch: str, side: int, args) -> tuple[tl.RGA, tl.RGA, torch.Tensor]:
    """The default module, a literal twin with the same weights, and an input (seeded)."""
    kwargs = dict(BRANCHES[branch], down_ratio=args.down_ratio)
    torch.manual_seed(0)
    factored = tl.RGA(args.channels, (side, side), **kwargs)
    literal = tl.RGA(args.channels, (side, side), relation="literal", **kwargs)
    literal.load_state_dict(factored.state_dict())
    return factored, literal, torch.randn(args.batch, args.channels, side, side)


def held_memory(module: tl.RGA, x: torch.Tensor) -> float:
    """Peak memory of a training step (second reading: freed blocks returned to the system)."""
    xg = x.clone().requires_grad_()

    def training():
        module.train()
        xg.grad = None
        module.zero_grad(set_to_none=True)
        module(xg).sum().backward()
    training()
    return peak(training)


def run_branch(branch: str, args) -> dict[int, dict[str, dict[str, float] | None]]:
    results = {}
    print(f"\nRGA-{branch} ({'default module' if branch == 'SC' else 'one branch'}): "
          f"C={args.channels}, batch={args.batch}", flush=True)
    head = (f"{'map':>7} {'N':>5} | {'GFLOPs lit/fac':>15} {'ratio':>6} | {'fwd ms lit/fac':>17} {'ratio':>6} | "
            f"{'fwd MiB* lit/fac':>17} {'ratio':>6} | {'f+b ms lit/fac':>17} {'ratio':>6} | {'f+b MiB* lit/fac':>17} "
            f"{'ratio':>6}")
    print(head)
    print("-" * len(head), flush=True)
    for side in args.sizes:
        n = side * side
        factored, literal, x = build_pair(branch, side, args)
        skip_literal = literal_bytes(args.batch, n, "S" in branch) > args.max_literal_gib * GiB
        if not skip_literal:
            with torch.no_grad():  # same weights, same function: checked before any timing
                torch.testing.assert_close(factored.eval()(x), literal.eval()(x), rtol=1e-4, atol=1e-5)
        row = {"factored": measure(factored, x, args.repeats),
               "literal": None if skip_literal else measure(literal, x, args.repeats),
               "flops": {name: flops(module, x.shape) for name, module in (("factored", factored), ("literal", literal))}}
        results[side] = row
        print(format_row(side, n, row), flush=True)
    print("pairs: literal/factored; ratio = factored / literal (below 1: the default is faster or lighter); "
          "GFLOPs: forward, counted (machine-independent); MiB*: glibc's default allocator (counts retained "
          "freed blocks)")
    return results


def flops(module: tl.RGA, shape: torch.Size) -> int:
    """Forward FLOPs (2 per multiply-add) of the module in eval mode, counted on shapes only (meta device)."""
    meta = copy.deepcopy(module).to("meta").eval()
    return tl.count_flops(meta, torch.empty(shape, device="meta"))


def format_row(side: int, n: int, row) -> str:
    f, lit = row["factored"], row["literal"]
    fl = row["flops"]
    cells = [f"{side:>3}x{side:<3} {n:>5}",
             f"{fl['literal'] / 1e9:>7.2f}/{fl['factored'] / 1e9:<7.2f} {fl['factored'] / fl['literal']:>6.3f}"]
    for key, scale in (("fwd_time", 1e3), ("fwd_mem", 1 / MiB), ("train_time", 1e3), ("train_mem", 1 / MiB)):
        if lit is None:
            cells.append(f"{'skipped':>8}/{f[key] * scale:<8.1f} {'-':>6}")
        else:
            cells.append(f"{lit[key] * scale:>8.1f}/{f[key] * scale:<8.1f} {f[key] / lit[key]:>6.3f}")
    return " | ".join(cells)


def run_held_memory(branch: str, args, results) -> None:
    """Second pass: training peak memory with freed blocks returned to the system."""
    print(f"\nRGA-{branch}: training peak memory held (mmap threshold 1 MiB), MiB literal/factored")
    for side in args.sizes:
        if results[side]["literal"] is None:
            continue
        factored, literal, x = build_pair(branch, side, args)
        held = {"factored": held_memory(factored, x), "literal": held_memory(literal, x)}
        results[side]["held"] = held
        print(f"{side:>3}x{side:<3} {held['literal'] / MiB:>8.1f}/{held['factored'] / MiB:<8.1f} "
              f"{held['factored'] / held['literal']:>6.3f}", flush=True)


def verdicts(results, branch: str, side: int) -> None:
    row = results.get(side)
    if row is None or row["literal"] is None:
        print(f"RGA-{branch} at {side}x{side}: not measured (literal mode skipped or size not run)")
        return
    f, lit = dict(row["factored"]), dict(row["literal"])
    if "held" in row:
        f["held_mem"], lit["held_mem"] = row["held"]["factored"], row["held"]["literal"]
    print(f"RGA-{branch} at {side}x{side} (N = {side * side}):")
    checks = [("fwd_time", "forward time", 0.10), ("train_time", "forward+backward time", 0.15),
              ("held_mem", "training memory (held)", 0.20) if "held" in row else
              ("train_mem", "training memory*", 0.20)]
    for key, what, target in checks:
        ratio = f[key] / lit[key]
        print(f"  {what:<22} {ratio:.3f} of literal (target <= {target:.2f}: "
              f"{'met' if ratio <= target else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 42, 56, 64])
    parser.add_argument("--branches", nargs="+", default=["SC", "S"], choices=list(BRANCHES))
    parser.add_argument("--down-ratio", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--max-literal-gib", type=float, default=6.0,
                        help="skip a literal run whose relation tensors would need more (estimate)")
    parser.add_argument("--target-size", type=int, default=56, help="side at which the targets are checked")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks that the script works")
    parser.add_argument("--keep-allocator", action="store_true",
                        help="measure memory with glibc's default (dynamic) mmap threshold")
    args = parser.parse_args(argv)

    if args.quick:
        args.channels, args.batch, args.sizes, args.repeats = 32, 2, [6, 8], 1
        args.down_ratio, args.target_size = 4, 8
    torch.set_num_threads(args.threads)
    print(f"RGA relation embedding, factored (default) vs literal (official): float32, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    all_results = {branch: run_branch(branch, args) for branch in args.branches}
    if not args.keep_allocator:
        print(f"\nallocator for the second memory reading: {set_mmap_threshold(2 ** 20)}")
        for branch, results in all_results.items():
            run_held_memory(branch, args, results)
    print(f"\ntargets at {args.target_size}x{args.target_size}: forward <= 0.10, forward+backward <= 0.15, "
          f"training memory <= 0.20 of literal")
    for branch, results in all_results.items():
        verdicts(results, branch, args.target_size)
    n = args.target_size ** 2
    print(f"(one float32 N x N relation matrix at N = {n} for the batch: "
          f"{tl.format_bytes(args.batch * n * n * 4)}; literal skipped above ~{args.max_literal_gib} GiB: "
          f"{'none' if all(r['literal'] is not None for res in all_results.values() for r in res.values()) else 'see rows'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
