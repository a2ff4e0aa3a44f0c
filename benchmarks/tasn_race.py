"""The TASN race of notebook 06, at a fair budget: equal total epochs, every arm until it levels off.

    .venv/bin/python benchmarks/tasn_race.py             # the full race (about 19 CPU-minutes, one thread)
    .venv/bin/python benchmarks/tasn_race.py --quick     # seconds: 1 seed, 300 images (checks that it runs)
    .venv/bin/python benchmarks/tasn_race.py --out FILE.json

Writes ``benchmarks/results/tasn_race.json``: the recipe, the seeds, the budgets, torch's version,
and every arm's validation accuracy after every epoch of every seed (the curves). Notebook 06
reads the committed file: the race does not fit the notebook's 60 s, so the notebook runs a
scaled-down race live and asserts against this file what only the full race can show.

The task and the recipe are notebook 06's (section 7): ``tl.fine_grained_details(1400, seed=0)``,
1,000 images to train and 400 to validate, 64 x 64 images whose class is a 12 x 12 mark on the
object's head; every classifier sees 16 x 16 inputs (256 pixels). The network is the notebook's
``SmallNet`` (three 3 x 3 convolutions of 12, 24, 24 channels with batch norm, global max
pooling, a linear classifier), trained with ``tl.fit`` (Adam, lr 3e-3, batch 64, constant rate).
A seed fixes the starting weights and the order of the batches; every arm of a seed starts from
the same weights. With a constant learning rate the network after k epochs of a long run is the
network of a k-epoch run (checked for every seed), so one run per arm and seed gives every
budget: its curve.

The main race, one network per arm, ``EPOCHS`` (36) epochs, the baselines twice as long:

* ``uniform``: 16 x 16 inputs on a uniform grid (the sampler with a flat map), 72 epochs;
* ``block means``: each input pixel the mean of a 4 x 4 block, a free baseline in which every
  pixel counts, 72 epochs;
* ``attention, learned map``: TASN's recipe, scaled down. The attention network is the uniform
  arm's network after ``ATT_EPOCHS`` (6) epochs; trilinear attention on its last feature map,
  the structure map, the attention sampler; the master network (same architecture and starting
  weights) trains on the sampled 16 x 16 images. Its cost is 6 epochs + the master's epochs;
* ``attention, untrained map``: the same with the maps of the same network *untrained* (its
  starting weights, batch norm on the data's own statistics): the ablation that removes what the
  attention network learned and keeps everything else. Its cost is the master's epochs;
* ``attention, converged attention net``: the maps of the uniform network after 36 epochs
  (levelled off). Its cost is 36 + the master's epochs, hence the baselines' 72.

The part/master race (one shared network, two heads, as in TASN's training), ``JOINT_EPOCHS``
(48) epochs, all in one loop (``train_part_master``), the same seeds, starting weights and batch
order, on the learned map of the 6-epoch attention network:

* ``master alone``: the loop with the part head switched off; it reproduces the
  ``attention, learned map`` curve exactly (checked: the same training as ``tl.fit``);
* ``part + master``: a part head on images sampled with one random attention map per image and
  step (``tl.detail_map``), a master head on the structure-preserved images, one backbone;
* ``part + master + distillation``: plus ``tl.distillation_loss`` (official form, T = 10);
* ``part + master, untrained detail maps``: the part head's images sampled with one random map of
  the *untrained* network (the master's as before): does the part head's effect need maps that
  learned where the mark is?

After the last epoch every part/master arm is also scored with its batch norm statistics
re-estimated on structure-preserved training images only (``tl.recalibrate_batchnorm``). In the
joint loop those statistics average [detail; structure] batches; the master alone's own gain
from re-estimating is the control.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import tutorial_lib as tl  # first: process settings before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import reduce  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "tasn_race.json"

IMAGES, TRAIN, DATA_SEED = 1400, 1000, 0
SIZE, LOW, WIDTH, LR, BATCH = 64, 16, 12, 3e-3, 64
ATT_EPOCHS = 6              # the attention network's epochs (notebook 06)
EPOCHS = 36                 # the attention arms' curves (uniform and block means: twice as long)
JOINT_EPOCHS = 48           # the part/master arms' curves
SEEDS = 8
ARMS = ("uniform", "block means", "attention, learned map", "attention, untrained map",
        "attention, converged attention net")
JOINT_ARMS = ("master alone", "part + master", "part + master + distillation", "part + master, untrained detail maps")


class SmallNet(nn.Module):
    """Notebook 06's network: three 3 x 3 convolutions with batch norm, global max pooling."""

    def __init__(self, width: int = WIDTH, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)          # the classifier (the master head)
        self.fc_part = nn.Linear(2 * width, classes)     # the part head (part/master race only)

    def embed(self, x):
        return reduce(self.features(x), "b c h w -> b c", "max")

    def forward(self, x):
        return self.fc(self.embed(x))


def new_net(seed: int) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


def curve(x_train, x_val, data, seed: int, epochs: int) -> tuple[SmallNet, list[float]]:
    """Train a new network of this seed with ``tl.fit``; its validation accuracy after every epoch."""
    (train, val), net = data, new_net(seed)
    history = tl.fit(net, TensorDataset(x_train, train.labels), val=TensorDataset(x_val, val.labels),
                     epochs=epochs, lr=LR, batch_size=BATCH, seed=seed, progress=False, verbose=False)
    return net, history.val_metric


def structure_sampled(net: SmallNet, sampler, images_train, images_val, low_train, low_val, train_mode=False):
    """The images sampled with ``net``'s structure maps (and the maps), train and validation."""
    out = []
    with torch.no_grad():
        net.train(train_mode)
        for images, low in ((images_train, low_train), (images_val, low_val)):
            maps = tl.TrilinearAttention()(net.features(low))
            out.append((sampler(images, tl.structure_map(maps, SIZE)), maps))
    net.eval()
    return out


def train_part_master(net: SmallNet, maps, structure_images, images, labels, val_x, val_labels, *,
                      part: bool, distill: bool, seed: int, epochs: int, sampler) -> tuple[list[float], SmallNet]:
    """The part/master loop: one backbone, a part head (detail-sampled images), a master head.

    The batch order is ``tl.fit``'s for this seed (its own generator), the detail draws come from
    a second generator, so switching the part head off leaves exactly ``tl.fit``'s training.
    Returns the master's validation accuracy after every epoch (eval mode), and the network.
    """
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    draws = torch.Generator().manual_seed(10_000 + seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)
    val = TensorDataset(val_x, val_labels)
    accuracies = []
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(labels), generator=order).split(BATCH):
            if part:
                detail = sampler(images[idx], tl.detail_map(maps[idx], SIZE, training=True, generator=draws))
                z = net.embed(torch.cat([detail, structure_images[idx]]))        # one shared backbone
                part_logits, master_logits = net.fc_part(z[:len(idx)]), net.fc(z[len(idx):])
                loss = F.cross_entropy(part_logits, labels[idx]) + F.cross_entropy(master_logits, labels[idx])
                if distill:
                    loss = loss + tl.distillation_loss(master_logits, part_logits)   # T = 10, official form
            else:
                loss = F.cross_entropy(net(structure_images[idx]), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        accuracies.append(tl.evaluate(net, val)["accuracy"])
    return accuracies, net.eval()


def run(seeds, epochs: int, joint_epochs: int, images: int, log=print) -> dict:
    data = tl.fine_grained_details(images, seed=DATA_SEED)
    train, val = data.split(TRAIN if images == IMAGES else int(0.7 * images))
    sampler = tl.AttentionSampler(LOW)

    def uniform(x):
        return sampler(x, torch.ones(len(x), 2, 2))

    def sampled(net, trained=True):
        return structure_sampled(net, sampler, train.images, val.images, low_train, low_val, train_mode=not trained)

    low_train, low_val = uniform(train.images), uniform(val.images)
    mean_train = reduce(train.images, "n c (h a) (w b) -> n c h w", "mean", a=SIZE // LOW, b=SIZE // LOW)
    mean_val = reduce(val.images, "n c (h a) (w b) -> n c h w", "mean", a=SIZE // LOW, b=SIZE // LOW)
    pair = (train, val)
    baseline_epochs = 2 * epochs           # the converged arm's total: its attention network's epochs + its own
    curves = {arm: [] for arm in ARMS + JOINT_ARMS}
    recalibrated = {arm: [] for arm in JOINT_ARMS}
    share, share_untrained, on_mark, on_mark_untrained, same_loop = [], [], [], [], []
    for seed in seeds:
        start = time.process_time()
        att_net, att_curve = curve(low_train, low_val, pair, seed, ATT_EPOCHS)      # the attention network
        conv_net, conv_curve = curve(low_train, low_val, pair, seed, epochs)        # ... levelled off
        _, uniform_curve = curve(low_train, low_val, pair, seed, baseline_epochs)
        if att_curve != uniform_curve[:ATT_EPOCHS] or conv_curve != uniform_curve[:epochs]:
            raise RuntimeError("a short run is not the start of a long one: the curves would not give budgets")
        curves["uniform"].append(uniform_curve)
        curves["block means"].append(curve(mean_train, mean_val, pair, seed, baseline_epochs)[1])
        (x_train, maps_train), (x_val, maps_val) = sampled(att_net)
        curves["attention, learned map"].append(curve(x_train, x_val, pair, seed, epochs)[1])
        # the untrained control: the seed's starting weights, batch norm on the data's own statistics
        (u_train, u_maps_train), (u_val, u_maps_val) = sampled(new_net(seed), trained=False)
        curves["attention, untrained map"].append(curve(u_train, u_val, pair, seed, epochs)[1])
        (c_train, _), (c_val, _) = sampled(conv_net)
        curves["attention, converged attention net"].append(curve(c_train, c_val, pair, seed, epochs)[1])
        with torch.no_grad():
            s_val, s_untrained = tl.structure_map(maps_val, SIZE), tl.structure_map(u_maps_val, SIZE)
            share.append(tl.attention_on_mask(s_val, val.masks).mean().item())
            share_untrained.append(tl.attention_on_mask(s_untrained, val.masks).mean().item())
            on_mark.append(sampler(val.masks[:, None].float(), s_val).mean().item())
            on_mark_untrained.append(sampler(val.masks[:, None].float(), s_untrained).mean().item())
        for arm, part, distill, detail_maps in (("master alone", False, False, maps_train),
                                                ("part + master", True, False, maps_train),
                                                ("part + master + distillation", True, True, maps_train),
                                                ("part + master, untrained detail maps", True, False, u_maps_train)):
            acc, net = train_part_master(new_net(seed), detail_maps, x_train, train.images, train.labels, x_val,
                                         val.labels, part=part, distill=distill, seed=seed,
                                         epochs=joint_epochs, sampler=sampler)
            curves[arm].append(acc)
            if arm == "master alone":
                shared = min(epochs, joint_epochs)
                same_loop.append(acc[:shared] == curves["attention, learned map"][-1][:shared])
            tl.recalibrate_batchnorm(net, TensorDataset(x_train, train.labels))    # structure images only
            recalibrated[arm].append(tl.evaluate(net, TensorDataset(x_val, val.labels))["accuracy"])
        log(f"seed {seed}: {time.process_time() - start:.0f} CPU-s; at {epochs} epochs "
            + ", ".join(f"{arm} {curves[arm][-1][epochs - 1]:.3f}" for arm in ARMS)
            + f"; at {joint_epochs}: " + ", ".join(f"{arm} {curves[arm][-1][-1]:.3f}" for arm in JOINT_ARMS))
    return {
        "curves": curves,
        "batch norm re-estimated on structure images, after the last epoch": recalibrated,
        "master alone reproduces tl.fit's curve": same_loop,
        "share of the structure map on the mark": {"learned": share, "untrained": share_untrained},
        "share of the 16 x 16 input on the mark": {"learned": on_mark, "untrained": on_mark_untrained,
                                                   "uniform": uniform(val.masks[:, None].float()).mean().item()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 images, short curves: checks that it runs")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the JSON (default {OUT})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        seeds, epochs, joint, images = (0,), ATT_EPOCHS, 2, 300
    else:
        seeds, epochs, joint, images = tuple(range(args.seeds)), EPOCHS, JOINT_EPOCHS, IMAGES
    start = time.process_time()
    results = run(seeds, epochs, joint, images)
    record = {
        "recipe": {"images": images, "train": TRAIN if images == IMAGES else int(0.7 * images),
                   "data_seed": DATA_SEED, "size": SIZE, "low": LOW, "width": WIDTH, "lr": LR, "batch": BATCH,
                   "optimiser": "Adam, constant learning rate", "attention_epochs": ATT_EPOCHS,
                   "parameters": tl.count_parameters(SmallNet().features) + tl.count_parameters(SmallNet().fc)},
        "seeds": list(seeds),
        "epochs": epochs, "baseline_epochs": 2 * epochs, "joint_epochs": joint,
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_seconds": round(time.process_time() - start),
        **results,
    }
    if args.quick and args.out is None:
        print(json.dumps({k: v for k, v in record.items() if k != "curves"}, indent=1)[:2000])
        return 0
    out = args.out or OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} ({record['cpu_seconds']} CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
