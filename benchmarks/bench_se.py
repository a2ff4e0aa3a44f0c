"""SqueezeExcitation against a direct transcription of the official SE forward pass.

    .venv/bin/python benchmarks/bench_se.py            (or: make bench)
    .venv/bin/python benchmarks/bench_se.py --quick    (tiny sizes, a few seconds: the unit tests run it)

Both sides compute the same block with the same weights (checked equal before timing):

* ``tl.SqueezeExcitation``: the finalized module; it applies its two 1x1 kernels as matrix
  products on the (B, C) squeezed vector;
* official: the layers of the official Caffe model (hujie-frank/SENet, SE-ResNet-50.prototxt)
  transcribed one to one: global average pooling, 1x1 convolution, ReLU, 1x1 convolution,
  sigmoid, channel-wise scale. Written here for the comparison, with the module's weights.

For each input it prints the median time of a forward pass without gradients (inference) and
of a forward + backward pass (training), single thread (``--threads`` to change), and the ratio module / official (below
1: the module is faster). The first row is the size the notebook trains on. Timings vary from
run to run and machine to machine: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import tutorial_lib as tl  # first: it sets the process-wide CPU settings before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIZES = [(64, 16, 8, 8), (8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7)]
QUICK_SIZES = [(4, 16, 4, 4), (2, 64, 6, 6)]


def official_se(se: tl.SqueezeExcitation, x: torch.Tensor) -> torch.Tensor:
    """The official layer sequence: AVE global pooling -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid -> scale."""
    z = F.adaptive_avg_pool2d(x, 1)
    s = torch.sigmoid(F.conv2d(torch.relu(F.conv2d(z, se.fc1.weight, se.fc1.bias)), se.fc2.weight, se.fc2.bias))
    return x * s


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(shape: tuple[int, int, int, int], repeats: int) -> tuple[float, float, float, float]:
    torch.manual_seed(0)
    se = tl.SqueezeExcitation(shape[1], min(16, shape[1]))
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(se(x), official_se(se, x))   # same numbers before any timing
    xg = x.clone().requires_grad_()

    def infer(f):
        def run():
            with torch.no_grad():
                f(x)
        return run

    def train(f):
        def run():
            f(xg).sum().backward()
        return run

    module, official = se, (lambda t: official_se(se, t))
    return (median_time(infer(module), repeats), median_time(infer(official), repeats),
            median_time(train(module), repeats), median_time(train(official), repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the notebooks use 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = args.repeats or (3 if args.quick else 30)
    print(f"SqueezeExcitation (r = 16) vs the official layer sequence; {args.threads} thread(s); median of {repeats}; "
          f"ratio < 1: the module is faster")
    print(f"{'B x C x H x W':>18} {'fwd module':>11} {'fwd official':>13} {'ratio':>6} "
          f"{'fwd+bwd module':>15} {'fwd+bwd official':>17} {'ratio':>6}")
    for shape in sizes:
        f_mod, f_off, t_mod, t_off = measure(shape, repeats)
        name = " x ".join(map(str, shape))
        print(f"{name:>18} {1e3 * f_mod:>8.3f} ms {1e3 * f_off:>10.3f} ms {f_mod / f_off:>6.2f} "
              f"{1e3 * t_mod:>12.3f} ms {1e3 * t_off:>14.3f} ms {t_mod / t_off:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
