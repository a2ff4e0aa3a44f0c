"""SE and CBAM against direct transcriptions of the official forward passes and of two peers.

    .venv/bin/python benchmarks/bench_se_cbam.py            (or: make bench)
    .venv/bin/python benchmarks/bench_se_cbam.py --quick    (tiny sizes, a few seconds)

Every competitor below is our own code, written to compute the same function as the
``tutorial_lib`` module in the style of the code it is named after:

* SE, official (hujie-frank/SENet, Caffe prototxt): global average pooling, biased 1x1
  convolution, ReLU, biased 1x1 convolution, sigmoid, scale (the scale half of ``Axpy``).
* SE, timm (``SEModule``): ``mean((2, 3), keepdim=True)``, biased 1x1 convolutions, gate.
* SE, External-Attention-pytorch (``SEAttention``): ``AdaptiveAvgPool2d``, ``view``,
  ``nn.Linear`` layers (given biases here, to compute the same function).
* CBAM, official (Jongchan/attention-module ``MODELS/cbam.py``): ``ChannelGate`` with
  ``avg_pool2d`` / ``max_pool2d`` over the whole map, one ``nn.Linear`` MLP applied to each,
  summed, sigmoid; ``ChannelPool`` = [``torch.max(x, 1)[0]``, ``torch.mean(x, 1)``];
  ``SpatialGate`` = 7x7 conv without bias, ``BatchNorm2d(1, momentum=0.01)``, sigmoid.
* CBAM, timm semantics (``CbamModule`` with ``mlp_bias=True``): ``mean`` / ``amax`` over
  (2, 3), 1x1-conv MLP applied twice; spatial [mean, amax] (paper order: the conv weight's
  two input channels are swapped to compute the same function), conv + BatchNorm.
* CBAM, External-Attention-pytorch semantics (``CBAMBlock``): ``AdaptiveMaxPool2d`` /
  ``AdaptiveAvgPool2d``, 1x1-conv MLP; spatial ``torch.max(x, dim=1)`` / ``torch.mean``,
  [max, avg]. Its real block differs (no BN, a biased conv, kernel 49, a residual inside):
  here it gets the official semantics so that only the way of computing differs.

Before timing, every competitor receives the same weights, which are checked equal, and its
output and input gradient are checked against the module's (tie-free random input). Then,
single thread, batch 8, 256 channels, train mode (the BatchNorm uses batch statistics):
median time of a forward pass without gradients, and of a forward + backward pass with a
fixed random output gradient. With one thread the clock is the CPU time of that thread
(``time.thread_time``), so time that other processes take from the core is not counted;
``--clock wall`` measures elapsed time instead. Ratios are ours / theirs (below 1: ``tutorial_lib`` is faster).
The competitors are timed in interleaved rounds, so a change of machine load hits all alike;
still, run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import tutorial_lib as tl  # first: sets the CPU instruction set and OpenMP waiting before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


# --- SE ---------------------------------------------------------------------------------------

class OfficialSE(nn.Module):
    """hujie-frank/SENet prototxt: AVE global pooling, 1x1 conv (bias), ReLU, 1x1 conv (bias), Sigmoid, scale."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        pooled = F.avg_pool2d(x, kernel_size=x.shape[2:])
        return x * torch.sigmoid(self.up(F.relu(self.down(pooled))))


class TimmSE(nn.Module):
    """timm SEModule semantics: mean over (2, 3) with keepdim, fc1, ReLU, fc2, gate."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class ExternalAttentionSE(nn.Module):
    """External-Attention-pytorch SEAttention semantics (with biases): AdaptiveAvgPool2d, Linear layers."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.shape
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y.expand_as(x)


def se_competitors(se: tl.SqueezeExcitation) -> dict[str, nn.Module]:
    c, d = se.channels, se.hidden_channels
    official, timm, ea = OfficialSE(c, d), TimmSE(c, d), ExternalAttentionSE(c, d)
    with torch.no_grad():
        for down, up in ((official.down, official.up), (timm.fc1, timm.fc2)):
            down.load_state_dict(se.fc1.state_dict())
            up.load_state_dict(se.fc2.state_dict())
        ea.fc[0].weight.copy_(se.fc1.weight.flatten(1))
        ea.fc[0].bias.copy_(se.fc1.bias)
        ea.fc[2].weight.copy_(se.fc2.weight.flatten(1))
        ea.fc[2].bias.copy_(se.fc2.bias)
    pairs = []
    for down, up in ((official.down, official.up), (timm.fc1, timm.fc2)):
        pairs += [(se.fc1.weight, down.weight), (se.fc1.bias, down.bias), (se.fc2.weight, up.weight),
                  (se.fc2.bias, up.bias)]
    pairs += [(se.fc1.weight.flatten(1), ea.fc[0].weight), (se.fc1.bias, ea.fc[0].bias),
              (se.fc2.weight.flatten(1), ea.fc[2].weight), (se.fc2.bias, ea.fc[2].bias)]
    weights_equal(pairs)
    return {"official": official, "timm": timm, "External-Attention": ea}


# --- CBAM -------------------------------------------------------------------------------------

class OfficialCBAM(nn.Module):
    """Jongchan/attention-module MODELS/cbam.py: ChannelGate (avg_pool2d, max_pool2d), ChannelPool, SpatialGate."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        size = (x.size(2), x.size(3))
        avg = self.mlp(F.avg_pool2d(x, size, stride=size))
        mx = self.mlp(F.max_pool2d(x, size, stride=size))
        x = x * torch.sigmoid(avg + mx).unsqueeze(2).unsqueeze(3).expand_as(x)
        compress = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.bn(self.conv(compress)))


class TimmCBAM(nn.Module):
    """timm CbamModule semantics (mlp_bias=True): mean/amax over (2, 3), 1x1-conv MLP twice; [mean, amax]."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        x_avg = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(F.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        x = x * torch.sigmoid(x_avg + x_max)
        attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(attn)))


class ExternalAttentionCBAM(nn.Module):
    """External-Attention-pytorch CBAMBlock's way of computing, with the official semantics."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.maxpool = nn.AdaptiveMaxPool2d(1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        out = x * torch.sigmoid(self.se(self.maxpool(x)) + self.se(self.avgpool(x)))
        max_result, _ = torch.max(out, dim=1, keepdim=True)
        avg_result = torch.mean(out, dim=1, keepdim=True)
        result = torch.cat([max_result, avg_result], 1)
        return out * torch.sigmoid(self.bn(self.conv(result)))


def cbam_competitors(cbam: tl.CBAM) -> dict[str, nn.Module]:
    ca, sa = cbam.channel_gate, cbam.spatial_gate
    c, d, k = ca.channels, ca.hidden_channels, sa.kernel_size
    w0, b0, w1, b1 = ca.mlp[0].weight, ca.mlp[0].bias, ca.mlp[2].weight, ca.mlp[2].bias
    official, timm, ea = OfficialCBAM(c, d, k), TimmCBAM(c, d, k), ExternalAttentionCBAM(c, d, k)
    with torch.no_grad():
        official.mlp[1].weight.copy_(w0)
        official.mlp[1].bias.copy_(b0)
        official.mlp[3].weight.copy_(w1)
        official.mlp[3].bias.copy_(b1)
        for fc1, fc2 in ((timm.fc1, timm.fc2), (ea.se[0], ea.se[2])):
            fc1.weight.copy_(w0[:, :, None, None])
            fc1.bias.copy_(b0)
            fc2.weight.copy_(w1[:, :, None, None])
            fc2.bias.copy_(b1)
        official.conv.weight.copy_(sa.conv.weight)
        ea.conv.weight.copy_(sa.conv.weight)
        timm.conv.weight.copy_(sa.conv.weight.flip(1))  # [mean, max] input order
        for peer in (official, timm, ea):
            peer.bn.load_state_dict(sa.bn.state_dict())
    weights_equal([(w0, official.mlp[1].weight), (b1, official.mlp[3].bias),
                   (w0, timm.fc1.weight.flatten(1)), (w1, timm.fc2.weight.flatten(1)), (b0, timm.fc1.bias),
                   (w0, ea.se[0].weight.flatten(1)), (w1, ea.se[2].weight.flatten(1)), (b1, ea.se[2].bias),
                   (sa.conv.weight, official.conv.weight), (sa.conv.weight, ea.conv.weight),
                   (sa.conv.weight[:, [1, 0]], timm.conv.weight), (sa.bn.weight, timm.bn.weight),
                   (sa.bn.bias, ea.bn.bias), (sa.bn.running_var, official.bn.running_var)])
    return {"official": official, "timm": timm, "External-Attention": ea}


# --- checks and timing ------------------------------------------------------------------------

def weights_equal(pairs) -> None:
    for ours, theirs in pairs:
        if not torch.equal(ours.detach(), theirs.detach()):
            raise AssertionError("a competitor did not receive the same weights")


def check_same_function(ours: nn.Module, peers: dict[str, nn.Module], x: torch.Tensor, g: torch.Tensor) -> None:
    """Same output and same input gradient (train mode, then eval mode), on a tie-free input."""
    for training in (True, False):
        results = {}
        for name, module in {"ours": ours, **peers}.items():
            state = {k: v.clone() for k, v in module.state_dict().items()}  # keep running stats as they were
            module.train(training)
            xg = x.clone().requires_grad_()
            out = module(xg)
            out.backward(g)
            results[name] = (out.detach(), xg.grad)
            module.load_state_dict(state)
        for name in peers:
            torch.testing.assert_close(results[name][0], results["ours"][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(results[name][1], results["ours"][1], rtol=1e-4, atol=1e-5)
    for module in (ours, *peers.values()):
        module.train()


def timings(modules: dict[str, nn.Module], x: torch.Tensor, g: torch.Tensor, repeats: int,
            clock=time.perf_counter) -> dict[str, dict]:
    """Median seconds per call, forward (no gradients) and forward + backward, interleaved rounds."""
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
            module(xg).backward(g)
        return run

    result = {}
    for kind, make in (("fwd", forward), ("train", training)):
        runs = {name: make(m) for name, m in modules.items()}
        for run in runs.values():  # warm-up
            run()
            run()
        samples = {name: [] for name in runs}
        faults = dict.fromkeys(runs, 0)
        names = list(runs)
        for i in range(repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # each round starts elsewhere
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = clock()
                runs[name]()
                samples[name].append(clock() - start)
                faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        result[kind] = {name: statistics.median(s) for name, s in samples.items()}
        result[kind + "_faults"] = {name: f / repeats for name, f in faults.items()}
    return result


def report(title: str, rows: list[tuple[int, dict]]) -> str:
    peers = [n for n in rows[0][1]["fwd"] if n != "ours"]
    head = (f"{'map':>7} | {'pass':<16} | {'ours ms':>8} " + " ".join(f"{p + ' ms':>21}" for p in peers)
            + f" | {'vs official':>11} {'vs best peer':>12} {'(best peer)':<20}")
    lines = [title, head, "-" * len(head)]
    worst = {"fwd": 0.0, "train": 0.0}
    for size, r in rows:
        for kind, label in (("fwd", "forward, no grad"), ("train", "forward+backward")):
            t = r[kind]
            best = min(peers, key=lambda p: t[p])
            vs_off, vs_best = t["ours"] / t["official"], t["ours"] / t[best]
            worst[kind] = max(worst[kind], vs_best if kind == "fwd" else vs_off)
            lines.append(f"{size:>3}x{size:<3} | {label:<16} | {t['ours'] * 1e3:>8.2f} "
                         + " ".join(f"{t[p] * 1e3:>21.2f}" for p in peers)
                         + f" | {vs_off:>11.2f} {vs_best:>12.2f} {'(' + best + ')':<20}")
    lines.append("ratios: ours / theirs (below 1: tutorial_lib is faster); medians over interleaved rounds "
                 "(order rotated each round)")
    faults = {name: max(r[f"{kind}_faults"][name] for _, r in rows for kind in ("fwd", "train"))
              for name in rows[0][1]["fwd"]}
    lines.append("most page faults per call (any size, either pass): "
                 + ", ".join(f"{name} {f:,.0f}" for name, f in faults.items()))
    lines.append(f"worst forward ratio vs the best peer {worst['fwd']:.2f}; "
                 f"worst forward+backward ratio vs official {worst['train']:.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56])
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds per measurement (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["se", "cbam"], help="run one of the two tables")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: CPU time of this thread (default with one thread: time other processes "
                             "take from the core is not counted); wall: elapsed time (default with more threads)")
    parser.add_argument("--malloc", choices=["steady", "default"], default="steady",
                        help="steady (default): glibc keeps freed memory, no page-fault lottery; "
                             "default: glibc's own thresholds (see steady_allocator)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: checks that the script works")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batch, args.channels, args.sizes, args.repeats = 2, 32, [6, 9], 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    steady = all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items())
    print(f"SE and CBAM vs transcriptions of the official code and of peers: batch {args.batch}, "
          f"C = {args.channels}, float32, {args.threads} thread(s), train mode, "
          f"{'thread CPU' if args.clock == 'cpu' else 'wall-clock'} time, "
          f"malloc {'steady' if steady else 'default'}, torch {torch.__version__}")
    tables = []
    if args.only in (None, "se"):
        se = tl.SqueezeExcitation(args.channels)
        tables.append(("SqueezeExcitation (r = 16)", se, se_competitors(se)))
    if args.only in (None, "cbam"):
        cbam = tl.CBAM(args.channels)
        with torch.no_grad():  # trained-looking BatchNorm: with gamma = 0 the conv would get no gradient
            cbam.spatial_gate.bn.weight.fill_(1.0)
            cbam.spatial_gate.bn.bias.fill_(0.1)
        tables.append(("CBAM (r = 16, k = 7)", cbam, cbam_competitors(cbam)))
    for title, ours, peers in tables:
        rows = []
        for size in args.sizes:
            g = torch.Generator().manual_seed(size)
            x = torch.randn(args.batch, args.channels, size, size, generator=g)
            grad = torch.randn(x.shape, generator=g)
            check_same_function(ours, peers, x, grad)
            rows.append((size, timings({"ours": ours, **peers}, x, grad, args.repeats, clock)))
            print(f"  measured {title} at {size}x{size}", file=sys.stderr, flush=True)
        print()
        print(report(f"{title}: same weights and same outputs and input gradients checked first", rows))
    return 0


STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def steady_allocator() -> None:
    """Re-start this script with glibc's malloc keeping freed memory (Linux; once).

    By default glibc hands large freed blocks back to the system and page-faults them in again
    on the next allocation, depending on the history of earlier allocations: which module of a
    comparison pays thousands of page faults per call then depends on the order of the runs,
    not on its code. Fixed thresholds make every module reuse memory; ``--malloc default``
    keeps glibc's behaviour. The page faults per call are printed under each table.
    """
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})


if __name__ == "__main__":
    if build_parser().parse_args().malloc == "steady":
        steady_allocator()
    sys.exit(main())
