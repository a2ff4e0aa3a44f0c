"""The race of notebook 05: CSRA heads against plain heads on frozen features, every epoch, 5 seeds.

    .venv/bin/python benchmarks/csra_race.py             # the full race (about 14 CPU-minutes, one thread)
    .venv/bin/python benchmarks/csra_race.py --quick     # a few seconds: tiny data, 2 seeds, 3 epochs
    .venv/bin/python benchmarks/csra_race.py --out FILE.json

Writes ``benchmarks/results/csra_race.json``: the recipe, the seeds, the budget, the torch
version, and every arm's validation mAP after every epoch on every seed. Notebook 05 reads the
committed file (the full race does not fit the notebook's 60 s) and runs a scaled-down race live.

The recipe, for every seed s (the same for every arm):

* data: ``tl.objects_on_clutter_multilabel`` with ``CLUTTER`` strokes and pixel noise ``NOISE``
  (three times the default clutter and several times its noise: with the defaults a GAP head
  already scores above 0.99 mAP on one object per image, and no head can show a gain). The
  multi-label set (1 to 3 objects, data seed 0) and the single-label set (one object, data
  seed 1), 1,000 images to train a head and 500 to validate it; the same images for every seed;
* backbone: three conv-BN-ReLU layers (16, 32, 32 channels, two max-pools: an 8x8x32 map),
  pretrained with seed s for ``PRETRAIN_EPOCHS`` epochs on 2,000 single-glyph images of
  another data seed (cross-entropy, a GAP + linear head), then frozen; its features are
  computed once and every head of seed s sees the same features;
* heads (``ARMS``), initialised after ``torch.manual_seed(s)`` and trained with ``tl.fit``:
  Adam, learning rate ``LR``, batch 64, binary cross-entropy, ``EPOCHS`` epochs, the shuffling
  seeded by s; the validation mAP is recorded after every epoch;
* training-free (the paper's Figure 1): each seed's trained GAP + linear head, its classifier
  run over every position and ``mean + lam * max`` taken, for several lam, after the last epoch;
* for the linear heads on pooled features (a convex problem), the optimum of the training loss
  found by L-BFGS: where more epochs of the same head would end.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import tutorial_lib as tl  # first: process settings before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import reduce  # noqa: E402
from torch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "csra_race.json"
CLUTTER, NOISE = 36, 0.3
IMAGES, TRAIN, PRETRAIN_IMAGES, PRETRAIN_EPOCHS = 1500, 1000, 2000, 3
EPOCHS, LR, BATCH = 150, 1e-2, 64
SEEDS = (0, 1, 2, 3, 4)
# The task of the notebook's first version (the data set's defaults): GAP + linear near 1.0 there.
EARLIER_CLUTTER, EARLIER_NOISE = 12, 0.04
EARLIER_ARMS = ["GAP + linear", "CSRA 1 head, lam 0.1", "CSRA 4 heads, T 1,2,4,inf"]
FREE_LAMS = (0.0, 0.1, 0.2, 0.5, 1.0)
D, K = 32, 4


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def make_backbone() -> nn.Sequential:
    return nn.Sequential(*conv_bn(3, 16), nn.MaxPool2d(2), *conv_bn(16, 32), nn.MaxPool2d(2), *conv_bn(32, 32))


class GAPLinear(nn.Module):
    """Global average pooling + linear: the plain head."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, k)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return reduce(x, "b d h w -> b d", "mean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))


class GMPLinear(GAPLinear):
    """Global max pooling + linear."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return reduce(x, "b d h w -> b d", "max")


class AvgMaxLinear(GAPLinear):
    """[average; max] pooling + linear: both pooled vectors side by side, one linear layer."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__(2 * d, k)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([reduce(x, "b d h w -> b d", "mean"), reduce(x, "b d h w -> b d", "max")], dim=1)


class UnnormalisedCSRA(nn.Module):
    """CSRA without the classifier normalisation: the raw class scores x_p . m_k (T = 1)."""

    def __init__(self, d: int, k: int, temperature: float = 1.0, lam: float = 0.1) -> None:
        super().__init__()
        self.head = nn.Conv2d(d, k, 1, bias=False)  # the same initialisation as tl.CSRA's head
        self.temperature, self.lam = temperature, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.head(x).flatten(2)
        att = (score * torch.softmax(self.temperature * score, dim=2)).sum(dim=2)
        return score.mean(dim=2) + self.lam * att


ARMS = {
    "GAP + linear": lambda: GAPLinear(D, K),
    "GMP + linear": lambda: GMPLinear(D, K),
    "[GAP; GMP] + linear": lambda: AvgMaxLinear(D, K),
    "CSRA 1 head, lam 0.1": lambda: tl.CSRA(D, K, temperature=1.0, lam=0.1),
    "CSRA 1 head, lam 0.5": lambda: tl.CSRA(D, K, temperature=1.0, lam=0.5),
    "CSRA 4 heads, T 1,2,4,inf": lambda: tl.MultiHeadCSRA(D, K, 4, lam=0.5),
    "CSRA 4 heads, T 1,1,1,1": lambda: tl.MultiHeadCSRA(D, K, 4, lam=0.5, temperatures=[1, 1, 1, 1]),
    "CSRA 1 head, lam 0.1, unnormalised": lambda: UnnormalisedCSRA(D, K, temperature=1.0, lam=0.1),
}
DESCRIPTIONS = {
    "GAP + linear": "mean over positions, then a linear layer with bias (K*d + K parameters)",
    "GMP + linear": "max over positions, then a linear layer with bias (K*d + K)",
    "[GAP; GMP] + linear": "mean and max side by side, then a linear layer with bias (2*K*d + K)",
    "CSRA 1 head, lam 0.1": "tl.CSRA(d, K, temperature=1, lam=0.1): the official one-head (VOC) setting (K*d)",
    "CSRA 1 head, lam 0.5": "tl.CSRA(d, K, temperature=1, lam=0.5): one head with the COCO lam (K*d)",
    "CSRA 4 heads, T 1,2,4,inf": "tl.MultiHeadCSRA(d, K, 4, lam=0.5): the official COCO setting (4*K*d)",
    "CSRA 4 heads, T 1,1,1,1": "tl.MultiHeadCSRA(d, K, 4, lam=0.5, temperatures=[1, 1, 1, 1]): "
                               "four heads, every one at T = 1 (4*K*d)",
    "CSRA 1 head, lam 0.1, unnormalised": "CSRA at T = 1, lam = 0.1 without dividing the scores by the class "
                                          "weight norms (K*d)",
}
POOLED = {"GAP + linear": GAPLinear, "[GAP; GMP] + linear": AvgMaxLinear}  # convex: L-BFGS optimum


def make_data(clutter: int, noise: float, quick: bool) -> dict:
    n, pre = (120, 200) if quick else (IMAGES, PRETRAIN_IMAGES)
    multi = tl.objects_on_clutter_multilabel(n, clutter=clutter, noise=noise, seed=0)
    single = tl.objects_on_clutter_multilabel(n, objects=1, clutter=clutter, noise=noise, seed=1)
    pretrain = tl.objects_on_clutter_multilabel(pre, objects=1, clutter=clutter, noise=noise, seed=10)
    return {"multi": multi, "single": single, "pretrain": pretrain.as_single_label(), "train": 80 if quick else TRAIN}


def pretrained_features(data: dict, seed: int, epochs: int) -> tuple[dict, float]:
    """Seed ``seed``'s frozen backbone and the features of both sets; its last pretraining accuracy."""
    torch.manual_seed(seed)
    backbone = make_backbone()
    history = tl.fit(nn.Sequential(backbone, GAPLinear(D, K)), data["pretrain"], epochs=epochs, lr=3e-3,
                     seed=seed, progress=False, verbose=False)
    backbone.eval().requires_grad_(False)
    with torch.no_grad():
        features = {task: backbone(data[task].images) for task in ("multi", "single")}
    return features, history.train_metric[-1]


def train_head(make, feats: torch.Tensor, targets: torch.Tensor, n_train: int, seed: int, epochs: int):
    """Train as ``tl.fit(head, train, val=val, epochs, lr=LR, batch_size=BATCH, seed=seed, loss=BCE)``
    does (the same initialisation, shuffling and Adam steps), scoring only the validation set after
    every epoch (``tl.fit`` also scores every training batch). Returns the head and its curve."""
    torch.manual_seed(seed)
    head = make()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(head.parameters(), lr=LR)
    x, y, val_x, val_y = feats[:n_train], targets[:n_train], feats[n_train:], targets[n_train:]
    curve = []
    for _ in range(epochs):
        head.train()
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, BATCH):
            index = order[start:start + BATCH]
            loss = F.binary_cross_entropy_with_logits(head(x[index]), y[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        head.eval()
        with torch.no_grad():
            curve.append(tl.mean_average_precision(head(val_x), val_y))
    return head, curve


def four_lines(x: torch.Tensor, weight: torch.Tensor, lam: float) -> torch.Tensor:
    """The paper's Figure 1 on a (K, d) classifier: mean + lam * max of the per-position outputs."""
    y_raw = torch.einsum("bdp,kd->bkp", x.flatten(2), weight)
    return y_raw.mean(dim=2) + lam * y_raw.amax(dim=2)


def optimum(head_class, feats: torch.Tensor, targets: torch.Tensor, n_train: int, seed: int,
            max_iter: int = 3000) -> float:
    """Validation mAP of a linear head on pooled features at the optimum of its training loss."""
    torch.manual_seed(seed)
    head = head_class(D, K).double()
    x = feats.double()
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x[:n_train]), targets[:n_train].double())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return tl.mean_average_precision(head(x[n_train:]), targets[n_train:])


def race(clutter: float, noise: float, arms: list[str], seeds, epochs: int, pre_epochs: int, quick: bool,
         extras: bool) -> dict:
    """Every arm on both sets for every seed; with ``extras`` also training-free and L-BFGS optima."""
    data = make_data(clutter, noise, quick)
    n_train = data["train"]
    runs = {task: {arm: [] for arm in arms} for task in ("multi", "single")}
    free = {task: {str(lam): [] for lam in FREE_LAMS} for task in ("multi", "single")}
    optima = {task: {arm: [] for arm in POOLED} for task in ("multi", "single")}
    pretrain_accuracy = []
    for seed in seeds:
        features, accuracy = pretrained_features(data, seed, pre_epochs)
        pretrain_accuracy.append(round(accuracy, 4))
        for task in ("multi", "single"):
            feats, targets = features[task], data[task].targets
            for arm in arms:
                head, curve = train_head(ARMS[arm], feats, targets, n_train, seed, epochs)
                runs[task][arm].append([round(v, 5) for v in curve])
                if extras and arm == "GAP + linear":
                    for lam in FREE_LAMS:
                        score = four_lines(feats[n_train:], head.fc.weight.detach(), lam)
                        free[task][str(lam)].append(round(tl.mean_average_precision(score, targets[n_train:]), 5))
            if extras:
                for arm, head_class in POOLED.items():
                    optima[task][arm].append(round(optimum(head_class, feats, targets, n_train, seed,
                                                             max_iter=20 if quick else 3000), 5))
            print(f"clutter {clutter}, noise {noise}, seed {seed}, {task}: "
                  + "  ".join(f"{arm}: {runs[task][arm][-1][-1]:.3f}" for arm in arms), flush=True)
    out = {"data": {"clutter": clutter, "noise": noise, "images": len(data["multi"]), "train_images": n_train,
                    "pretrain_images": len(data["pretrain"])},
           "pretrain_accuracy": pretrain_accuracy, "curves": runs}
    if extras:
        out.update(training_free=free, optimum=optima)
    return out


def compact(text: str) -> str:
    """JSON with every list of numbers on one line (a curve is one line, not 150)."""
    return re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 seeds, 3 epochs: checks the script")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="how many of the seeds to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = SEEDS[:2] if args.quick else SEEDS[:args.seeds]
    epochs, pre_epochs = (3, 1) if args.quick else (EPOCHS, PRETRAIN_EPOCHS)
    out = args.out or (Path("/tmp/csra_race_quick.json") if args.quick else OUT)
    start = time.process_time()
    main_race = race(CLUTTER, NOISE, list(ARMS), seeds, epochs, pre_epochs, args.quick, extras=True)
    earlier = race(EARLIER_CLUTTER, EARLIER_NOISE, EARLIER_ARMS, seeds, epochs, pre_epochs, args.quick, extras=False)
    result = {
        "recipe": {
            "data": f"tl.objects_on_clutter_multilabel(n, clutter={CLUTTER}, noise={NOISE}, ...): multi-label "
                    f"(objects 1-3, data seed 0) and single-label (objects=1, data seed 1); the first "
                    f"{main_race['data']['train_images']} images train a head, the rest validate it",
            "pretrain": f"{main_race['data']['pretrain_images']} single-glyph images (data seed 10), {pre_epochs} "
                        "epochs of tl.fit (Adam, lr 3e-3, batch 64, cross-entropy) with a GAP + linear head; "
                        "then frozen",
            "backbone": "conv-BN-ReLU 16, max-pool, conv-BN-ReLU 32, max-pool, conv-BN-ReLU 32: (32, 8, 8) features",
            "heads": DESCRIPTIONS,
            "training": f"as tl.fit: Adam, lr {LR}, batch {BATCH}, binary cross-entropy; validation mAP after "
                        "every epoch",
            "seed": "seed s pretrains the backbone, initialises and shuffles every head (the data stay the same)",
            "training_free": "each seed's GAP + linear head after the last epoch: its classifier over every position, "
                             "mean + lam * max (the paper's Figure 1)",
            "optimum": "the linear heads on pooled features at the optimum of their training loss (L-BFGS, convex)",
            "earlier_task": f"the task of the notebook's first version (clutter={EARLIER_CLUTTER}, "
                            f"noise={EARLIER_NOISE}: the data set's defaults), same recipe, arms {EARLIER_ARMS}",
        },
        "seeds": list(seeds),
        "budget": {"epochs": epochs, "lr": LR, "batch": BATCH, "optimizer": "Adam", "pretrain_epochs": pre_epochs,
                   "cpu_seconds": round(time.process_time() - start, 1), "threads": 1},
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        **main_race,
        "earlier_task": earlier,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compact(json.dumps(result, indent=1)) + "\n")
    print(f"wrote {out} ({result['budget']['cpu_seconds']} CPU seconds)")
    for name, part in (("", main_race), ("earlier task, ", earlier)):
        for task in ("multi", "single"):
            print(f"\n{name}{task}-label, validation mAP after {epochs} epochs:")
            print(tl.results_table({arm: [c[-1] for c in curves] for arm, curves in part["curves"][task].items()},
                                   baseline="GAP + linear", metric="mAP"))
            for lam, values in part.get("training_free", {}).get(task, {}).items():
                print(f"training-free lam {lam}: {tl.format_mean_spread(values)}")
            for arm, values in part.get("optimum", {}).get(task, {}).items():
                print(f"{arm} at the optimum of its training loss: {tl.format_mean_spread(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
