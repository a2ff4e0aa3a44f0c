"""The full race of notebook 07: A² against global context on ``beacon_lookup``, two read-outs.

    .venv/bin/python benchmarks/a2_race.py            # the full race (about 11 CPU-minutes, one thread)
    .venv/bin/python benchmarks/a2_race.py --quick    # a few seconds: tiny data, 1 seed, 2 epochs
    .venv/bin/python benchmarks/a2_race.py --out FILE.json

Writes ``benchmarks/results/a2_race.json``: every run's validation curve (probe accuracy after
each epoch), for every arm and seed. Notebook 07 reads the committed file (the race does not
fit the notebook's 60 s), prints its table, asserts its claims against it, and runs a
scaled-down race live.

The networks are the notebook's (a test checks that the two definitions agree): a per-position
stem (two 1x1 convolutions with ReLUs), one global block, and a per-position read-out. Arms:

* block: ``tl.DoubleAttention(16, 8, 4)`` (416 parameters), GCNet's global-context block with a
  bottleneck of 11 (418 parameters), or no block at all (the control: no position then sees
  any other, so no arm of this kind can beat chance, 0.5);
* read-out: **linear** (one 1x1 convolution; a block that adds the same vector to every
  position is then capped below 1, notebook 07 derives the cap) or **MLP** (1x1 convolution to
  16 channels, ReLU, 1x1 convolution: nothing caps global context any more). For these arms the
  JSON also records how many of the 16 hidden units are still alive (above 0 somewhere on the
  validation maps) after training: a read-out whose units all died is stuck at chance.

Every arm shares the seeds 0..k-1. For one seed every arm starts from the same stem, and every
arm of a read-out from the same read-out (they are built first, the block last); every arm sees
the same batches (``tl.fit`` shuffles with its own generator seeded by the seed). Adam, learning rate
0.01, batches of 32 maps, the same number of epochs for every arm; 1,200 training and 300
validation maps of ``tl.beacon_lookup(1500, seed=0)``. One thread.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import tutorial_lib as tl  # noqa: I001  (first: process settings before torch loads)
import torch
from einops import einsum, rearrange
from torch import nn

OUT = Path(__file__).resolve().parent / "results" / "a2_race.json"
EPOCHS, SEEDS, LR, BATCH, MAPS, TRAIN = 60, 10, 1e-2, 32, 1500, 1200


# --- the networks of notebook 07 (tests/test_a2net.py checks they equal the notebook's) ---------

class GlobalContext(nn.Module):
    # GCNet's context block: softmax-pooled context, bottleneck + LayerNorm + ReLU, added everywhere.

    def __init__(self, c, hidden):
        super().__init__()
        self.key = nn.Conv2d(c, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(),
                                       nn.Conv2d(hidden, c, 1))
        nn.init.zeros_(self.transform[-1].weight)                       # starts as the identity
        nn.init.zeros_(self.transform[-1].bias)

    def weights(self, x):
        return torch.softmax(rearrange(self.key(x), "b 1 h w -> b (h w)"), dim=-1)   # over space

    def forward(self, x):
        context = einsum(rearrange(x, "b c h w -> b c (h w)"), self.weights(x), "b c p, b p -> b c")
        return x + self.transform(rearrange(context, "b c -> b c 1 1"))


class ProbeNet(nn.Module):
    # Per-position stem (1x1 convs), one global block, per-position read-out: (B, 2, H, W).

    def __init__(self, make_block, readout="linear", c_in=4, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU())
        if readout == "linear":
            self.head = nn.Conv2d(width, 2, 1)
        else:                                                           # one hidden layer, per position
            self.head = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, 2, 1))
        self.block = make_block(width)                                  # built last

    def forward(self, images):
        return self.head(self.block(self.stem(images)))


def probe_accuracy(logits, targets):
    asked = targets >= 0                                               # probes; -100 elsewhere
    return (logits.argmax(dim=1)[asked] == targets[asked]).float().mean().item()


BLOCKS = {"A²": lambda c: tl.DoubleAttention(c, 8, 4),
          "global context": lambda c: GlobalContext(c, 11),
          "no block": lambda c: nn.Identity()}
ARMS = {"A², linear": ("A²", "linear"), "global context, linear": ("global context", "linear"),
        "A², MLP": ("A²", "mlp"), "global context, MLP": ("global context", "mlp"),
        "no block, MLP": ("no block", "mlp")}


def build(arm: str, seed: int) -> ProbeNet:
    block, readout = ARMS[arm]
    torch.manual_seed(seed)
    return ProbeNet(BLOCKS[block], readout)


@torch.no_grad()
def live_hidden_units(net: ProbeNet, images: torch.Tensor) -> int | None:
    """How many of the MLP read-out's hidden ReLU units are above 0 somewhere on ``images``.

    A unit that is 0 everywhere passes no gradient and stays so: when all of them are, the
    read-out outputs a constant and the network is stuck at chance. None for a linear read-out.
    """
    if isinstance(net.head, nn.Conv2d):
        return None
    hidden = net.head[1](net.head[0](net.block(net.stem(images))))
    return int((hidden > 0).any(dim=(0, 2, 3)).sum())


def run(arm: str, seed: int, train, val, epochs: int) -> dict:
    net = build(arm, seed)
    start = time.process_time()
    history = tl.fit(net, train, val=val, epochs=epochs, batch_size=BATCH, lr=LR, seed=seed,
                     metric=probe_accuracy, metric_name="probe acc", progress=False, verbose=False)
    return {"seed": seed, "val_curve": [round(v, 4) for v in history.val_metric],
            "final_train_loss": round(history.train_loss[-1], 4),
            "live_hidden_units": live_hidden_units(net, val.images),
            "cpu_s": round(time.process_time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, one seed, two epochs: checks the script")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    maps, cut = (100, 80) if args.quick else (MAPS, TRAIN)
    tl.setup_notebook(seed=0, threads=1)
    train, val = tl.beacon_lookup(maps, seed=0).split(cut)
    started = time.process_time()
    result = {"data": f"tl.beacon_lookup({maps}, seed=0).split({cut})", "train_maps": len(train),
              "val_maps": len(val), "epochs": epochs, "seeds": list(range(seeds)), "lr": LR, "batch_size": BATCH,
              "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread",
              "parameters": {arm: tl.count_parameters(build(arm, 0)) for arm in ARMS},
              "runs": {arm: [] for arm in ARMS}}
    for seed in range(seeds):                   # seed by seed, so a cut-short run still pairs its arms
        for arm in ARMS:
            r = run(arm, seed, train, val, epochs)
            result["runs"][arm].append(r)
            print(f"{arm:<24} seed {seed}: final {r['val_curve'][-1]:.3f}  best {max(r['val_curve']):.3f}  "
                  f"live hidden units {r['live_hidden_units']}  ({r['cpu_s']:.1f} CPU s)", flush=True)
    result["cpu_s"] = round(time.process_time() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s*([-0-9., \n]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    args.out.write_text(text + "\n")                          # one line per curve
    print(f"wrote {args.out.name}: {len(ARMS)} arms x {seeds} seeds x {epochs} epochs in {result['cpu_s']} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
