"""NonLocalBlock against the best public PyTorch block of the same semantics, and the memory wall.

    .venv/bin/python benchmarks/bench_non_local.py             (or: make bench)
    .venv/bin/python benchmarks/bench_non_local.py --quick     (tiny sizes, a few seconds)
    .venv/bin/python benchmarks/bench_non_local.py --sizes 14 28 --repeats 20

The peer is AlexHex7/Non-local_pytorch (lib/non_local_embedded_gaussian.py, commit ec15789),
the most used PyTorch non-local block, transcribed below in our own code with the same
semantics: θ, φ, g as separate 1x1 convolutions, positions laid out by ``view`` and
``permute``, the N x N affinity θᵀφ built by ``matmul``, its softmax over the keys,
y = softmax · g, back to a map by ``permute().contiguous()``, then W (1x1 conv + BN) and + x.
It has no scale (the paper's Eq. 2), so ``tl.NonLocalBlock`` is built with ``scale=1.0``;
both run on the same weights, checked equal before timing.

The default configuration is the one the paper uses at res4 of a ResNet, measured at the map
sizes of res4 to res2 and beyond: B = 8, C = 256, inner width 128, **no** sub-sampling
(N̂ = N), single thread, float32. For each size it prints the median time and the peak memory
(rise of the resident set, ``tutorial_lib.peak_memory``) of

* a forward pass without gradients in eval mode (inference), and
* a forward + backward pass in train mode (training; batch-norm statistics from the batch),

for both blocks, and the ratios NonLocalBlock / AlexHex7 (below 1: NonLocalBlock is faster or
lighter). The two blocks are timed alternately, call by call. Time is the process's CPU time by
default (``--clock wall`` for wall-clock time): with one thread it equals the wall time on an
idle machine, and on a busy one it does not count the time slices other processes take.
Timings still vary between runs and machines: compare runs made on the same one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import tutorial_lib as tl  # first: it pins the CPU instruction set before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

MiB = 2 ** 20


class AlexHex7EmbeddedGaussian(nn.Module):
    """A transcription of AlexHex7's 2-D embedded-Gaussian block (sub_sample=False, bn_layer=True).

    The weights are taken from a ``tl.NonLocalBlock`` so that both compute the same function.
    """

    def __init__(self, block: tl.NonLocalBlock) -> None:
        super().__init__()
        if block.sub_sample or block.pairwise != "embedded_gaussian" or block.affinity_scale != 1.0:
            raise ValueError("the peer is the embedded Gaussian without sub-sampling and without scale")
        self.inter_channels = block.inner_channels
        conv = lambda cin, cout: nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0)  # noqa: E731
        c, d = block.channels, block.inner_channels
        self.g, self.theta, self.phi = conv(c, d), conv(c, d), conv(c, d)
        self.W = nn.Sequential(conv(d, c), nn.BatchNorm2d(c))
        with torch.no_grad():
            for mine, theirs in ((self.g, block.g), (self.theta, block.theta), (self.phi, block.phi),
                                 (self.W[0], block.out)):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        self.W[1].load_state_dict(block.bn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d = x.size(0), self.inter_channels
        g_x = self.g(x).view(b, d, -1).permute(0, 2, 1)           # (B, N, d), a strided view
        theta_x = self.theta(x).view(b, d, -1).permute(0, 2, 1)   # (B, N, d)
        phi_x = self.phi(x).view(b, d, -1)                        # (B, d, N)
        f = torch.matmul(theta_x, phi_x)                          # (B, N, N): the affinity
        f_div_c = F.softmax(f, dim=-1)                            # over the keys
        y = torch.matmul(f_div_c, g_x)                            # (B, N, d)
        y = y.permute(0, 2, 1).contiguous().view(b, d, *x.size()[2:])
        return self.W(y) + x


def peak(fn, tries: int) -> float:
    """Smallest of a few peak-memory readings (the first call of a size may grow allocator pools)."""
    fn()
    readings = [tl.peak_memory(fn) for _ in range(tries)]
    if any(r is None for r in readings):
        return float("nan")
    return float(min(readings))


def measure(blocks: dict[str, nn.Module], x: torch.Tensor, repeats: int, tries: int,
            clock=time.process_time) -> dict[str, float]:
    """Time and peak memory of each block, forward only (eval) and forward + backward (train).

    The two blocks are measured alternately, call by call, so that a change of machine load
    during the run affects both alike.
    """
    xg = x.clone().requires_grad_()

    def inference(block):
        def run():
            block.eval()
            with torch.no_grad():
                block(x)
        return run

    def training(block):
        def run():
            block.train()
            xg.grad = None
            block.zero_grad(set_to_none=True)
            block(xg).sum().backward()
        return run

    out: dict[str, float] = {}
    for kind, make in (("fwd", inference), ("train", training)):
        runs = {name: make(block) for name, block in blocks.items()}
        for run in runs.values():
            run()  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                start = clock()
                run()
                samples[name].append(clock() - start)
        for name, run in runs.items():
            out[f"{kind}_time_{name}"] = statistics.median(samples[name])
            out[f"{kind}_mem_{name}"] = peak(run, tries)
    return out


def table(rows: list[tuple[int, dict[str, float]]], batch: int) -> str:
    head = (f"{'map':>7} {'N':>5} {'A MiB':>6} | {'forward ms':^17} {'ratio':>5} {'forward MiB':^15} "
            f"{'ratio':>5} | {'fwd+bwd ms':^17} {'ratio':>5} {'fwd+bwd MiB':^15} {'ratio':>5}")
    lines = [head, "-" * len(head)]
    for size, r in rows:
        n = size * size
        cells = [f"{size:>3}x{size:<3} {n:>5} {batch * n * n * 4 / MiB:>6.1f} |"]
        for kind in ("fwd", "train"):
            tp, tn = r[f"{kind}_time_peer"] * 1e3, r[f"{kind}_time_ours"] * 1e3
            mp, mn = r[f"{kind}_mem_peer"] / MiB, r[f"{kind}_mem_ours"] / MiB
            cells.append(f"{tp:>8.2f}/{tn:<8.2f} {tn / tp:>5.2f} {mp:>7.1f}/{mn:<7.1f} {mn / mp:>5.2f}")
            if kind == "fwd":
                cells.append("|")
        lines.append(" ".join(cells))
    lines.append("each pair: AlexHex7 transcription / tl.NonLocalBlock; ratio = NonLocalBlock / AlexHex7 "
                 "(below 1: NonLocalBlock is faster or lighter);\nA MiB = bytes of one float32 N x N "
                 "affinity for the whole batch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256, help="C of the feature map")
    parser.add_argument("--inner", type=int, default=None, help="inner width d (default C/2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per measurement (median)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the process's CPU time (default; with one thread it equals the wall "
                             "time of an idle machine and is not inflated by other processes); wall: "
                             "wall-clock time")
    parser.add_argument("--memory-tries", type=int, default=2, help="peak-memory readings (smallest kept)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration (C=16, B=2, 6x6 and 10x10, 3 repeats): checks that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.batch, args.sizes, args.repeats, args.memory_tries = 16, 2, [6, 10], 3, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = tl.NonLocalBlock(args.channels, args.inner, sub_sample=False, scale=1.0)
    with torch.no_grad():  # random weights of order one, so the branch contributes to the output
        for p in block.parameters():
            p.normal_(0.0, 0.05)
        block.bn.weight.fill_(1.0)
    peer = AlexHex7EmbeddedGaussian(block)
    print(f"tl.NonLocalBlock vs AlexHex7 embedded Gaussian (transcription): C={args.channels}, "
          f"inner={block.inner_channels}, no sub-sampling, batch={args.batch}, float32, "
          f"{args.threads} thread(s), torch {torch.__version__}, median {args.clock} time of {args.repeats}")
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, args.channels, size, size)
        for mode in (False, True):  # same function, same weights, in eval and in train mode
            block.train(mode), peer.train(mode)
            with torch.no_grad():
                torch.testing.assert_close(block(x), peer(x), atol=1e-4, rtol=1e-4)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        rows.append((size, measure({"peer": peer, "ours": block}, x, args.repeats, args.memory_tries, clock)))
        print(f"  measured {size}x{size}", file=sys.stderr, flush=True)
    print(table(rows, args.batch))
    worst = {kind: max(r[f"{kind}_time_ours"] / r[f"{kind}_time_peer"] for _, r in rows) for kind in ("fwd", "train")}
    for kind, label in (("fwd", "forward"), ("train", "forward+backward")):
        print(f"largest time ratio, {label}: {worst[kind]:.2f} (target <= 1.0: "
              f"{'met' if worst[kind] <= 1.0 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
