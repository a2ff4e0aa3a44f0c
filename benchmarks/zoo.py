"""The zoo table of notebook 08: every mechanism in one backbone, on two offline tasks, 3 seeds.

    .venv/bin/python benchmarks/zoo.py                  # the full table (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/zoo.py --quick          # a few seconds: tiny data, 1 seed, 1 epoch
    .venv/bin/python benchmarks/zoo.py --out FILE.json

Writes ``benchmarks/results/zoo.json`` (every number, every seed) and ``zoo.md`` (the table).
Notebook 08 reads the committed JSON file: the full table does not fit the notebook's 60 s.

For every arm of ``tutorial_lib.zoo`` (plain, SE, CBAM, non-local, RGA, A2 in the backbone;
CSRA as the head) and every seed, on each task:

* the model is built with ``tutorial_lib.zoo.build(arm, K, seed)``: the backbone's starting
  weights depend on the seed only, so every arm starts from the same backbone;
* trained with ``tl.fit`` (Adam, lr 3e-3, batch 64, the same epochs for every arm), then its
  BatchNorm statistics are re-estimated on the training set (``tl.recalibrate_batchnorm``:
  short runs otherwise leave them lagging, which makes single epochs jump);
* scored on the validation set: accuracy (single-label ``objects_on_clutter``, 4 classes) or
  mean average precision (multi-label ``objects_on_clutter_multilabel``, 1-3 objects of 4
  classes), and **where it looks**: how often the peak of its spatial map (``zoo.spatial_map``;
  CSRA: the map of each present class) falls on a 4x4-pixel cell (one position of the
  16 x 16 feature map) that touches the object; a
  random map is the control (its rate is the share of cells that touch an object).

Cost, measured once per arm (seed 0, single thread, batch 64 at 64 x 64): parameters (whole
model and the mechanism's own), multiply-adds of one forward pass per image (torch's counter
/ 2), forward and forward+backward time as ratios to the plain model (medians, interleaved),
and the bytes one training step keeps for the backward pass (exact, unlike a process's peak).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import tutorial_lib as tl  # first: process settings before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tutorial_lib.zoo import ARMS, build, spatial_map  # noqa: E402
from tutorial_lib.zoo import peak_on_object as peak_hits  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "zoo.json"
# 64 x 64 images with an 8 x 8 object: the object covers 1/64 of the image, so global average
# pooling dilutes it (at 32 x 32 a plain network reaches 99-100 % and the table says nothing).
# Clutter grows with the area (12 pieces per 32 x 32).
# 1,500 images (1,200 to train): a budget at which the plain network has not saturated yet
# (with more images and epochs it closes much of the gap, and every arm nears 100 %).
SIZE, CLUTTER, EPOCHS, IMAGES = 64, 48, 6, 1500


def tasks(quick: bool) -> dict:
    n = 200 if quick else IMAGES
    single = tl.objects_on_clutter(n, size=SIZE, clutter=CLUTTER, seed=0)
    multi = tl.objects_on_clutter_multilabel(n, size=SIZE, objects=(1, 3), clutter=CLUTTER, seed=0)
    cut = int(0.8 * n)
    return {
        "single-label": dict(data=single.split(cut), classes=4, loss=None, metric=None, metric_name="accuracy"),
        "multi-label": dict(data=multi.split(cut), classes=4, loss=F.binary_cross_entropy_with_logits,
                            metric=tl.mean_average_precision, metric_name="mAP"),
    }


def where_it_looks(net, val, task: str) -> float | None:
    if task == "single-label":
        maps = spatial_map(net, val.images, val.labels)
        return None if maps is None else peak_hits(maps, val.masks).mean().item()
    # multi-label: CSRA scores each present class's own map on that class's object;
    # class-agnostic maps score a hit when the peak lies on any present object
    if net.arm == "CSRA":
        with torch.no_grad():
            _, maps = net.head(net.features(val.images), return_attention=True)
        present = val.targets > 0.5
        hits = [peak_hits(maps["attention"][:, k][present[:, k]], val.masks[:, k][present[:, k]])
                for k in range(val.targets.shape[1])]
        return torch.cat(hits).mean().item()
    maps = spatial_map(net, val.images)
    return None if maps is None else peak_hits(maps, val.masks.any(dim=1)).mean().item()


def random_control(val, task: str, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    masks = val.masks if task == "single-label" else val.masks.any(dim=1)
    maps = torch.rand(len(masks), SIZE // 4, SIZE // 4, generator=g)
    return peak_hits(maps, masks).mean().item()


def train_and_score(arm: str, task: str, spec: dict, seed: int, epochs: int) -> dict:
    train, val = spec["data"]
    net = build(arm, spec["classes"], seed, size=SIZE)
    tl.fit(net, train, epochs=epochs, lr=3e-3, batch_size=64, seed=seed, loss=spec["loss"],
           metric=spec["metric"], metric_name=spec["metric_name"], progress=False, verbose=False)
    tl.recalibrate_batchnorm(net, train)
    result = tl.evaluate(net, val, loss=spec["loss"], metric=spec["metric"], metric_name=spec["metric_name"])
    return {"score": result[spec["metric_name"]], "looks": where_it_looks(net, val, task)}


def saved_for_backward(net, x, y) -> int:
    """Bytes of the tensors autograd keeps between forward and backward in one training step.

    Each storage counts once; the parameters do not count (they exist with or without
    training). Unlike the process's peak memory this is exact and the same on every run: it is
    the activation memory a mechanism adds, which is what grows with batch size and image size.
    """
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    net.train()
    net.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    net.zero_grad(set_to_none=True)
    return sum(kept.values())


def costs(arms: list[str], repeats: int, batch: int) -> dict:
    torch.set_num_threads(1)
    x = torch.rand(batch, 3, SIZE, SIZE)
    y = torch.randint(0, 4, (batch,))
    nets = {arm: build(arm, 4, 0, size=SIZE) for arm in dict.fromkeys(["plain", *arms])}
    out = {}
    for arm, net in nets.items():
        block = net.head if arm == "CSRA" else net.block
        out[arm] = {"parameters": tl.count_parameters(net), "mechanism_parameters": tl.count_parameters(block),
                    "multiply_adds": tl.count_flops(net.eval(), x[:1]) // 2}
        if arm == "CSRA":  # the plain head's linear layer is what CSRA replaces
            out[arm]["mechanism_parameters"] -= tl.count_parameters(nets["plain"].head)

    def forward(net):
        def run():
            with torch.no_grad():
                net(x)
        return run

    def training(net):
        def run():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
        return run

    for arm, net in nets.items():  # warm-up
        net.train()
        forward(net)()
        training(net)()
    timings = {arm: {"forward": [], "training": []} for arm in nets}
    for _ in range(repeats):  # interleaved: every arm sees the same machine state
        for arm, net in nets.items():
            timings[arm]["forward"].append(tl.measure_latency(forward(net), repeats=1, warmup=0))
            timings[arm]["training"].append(tl.measure_latency(training(net), repeats=1, warmup=0))
    for arm, net in nets.items():
        out[arm]["forward_s"] = statistics.median(timings[arm]["forward"])
        out[arm]["training_s"] = statistics.median(timings[arm]["training"])
        out[arm]["saved_for_backward_bytes"] = saved_for_backward(net, x, y)
    torch.set_num_threads(2)
    return out


def markdown(result: dict) -> str:
    plain = result["costs"]["plain"]
    lines = ["| arm | parameters (mechanism) | multiply-adds / image | forward time | fwd+bwd time | "
             "saved for backward | single-label accuracy | peak on object | multi-label mAP | peak on object |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in result["arms"]:
        c = result["costs"][arm]
        row = [arm, f"{c['parameters']:,} ({c['mechanism_parameters']:+,})", f"{c['multiply_adds'] / 1e6:.2f} M",
               f"{c['forward_s'] / plain['forward_s']:.2f}× plain", f"{c['training_s'] / plain['training_s']:.2f}× plain",
               tl.format_bytes(c["saved_for_backward_bytes"])]
        for task in ("single-label", "multi-label"):
            runs = result["runs"][task][arm]
            row.append(tl.format_mean_spread([r["score"] for r in runs]).replace(f" ({len(runs)} seeds)", ""))
            looks = [r["looks"] for r in runs]
            row.append("—" if looks[0] is None else tl.format_mean_spread(looks, digits=2).split(" (")[0])
        lines.append("| " + " | ".join(row) + " |")
    controls = result["controls"]
    lines.append(f"| random map (control) | | | | | | | {controls['single-label']:.2f} | | {controls['multi-label']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, one seed, one epoch: checks the script")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    epochs = 1 if args.quick else args.epochs
    tl.setup_notebook(seed=0)
    specs = tasks(args.quick)
    started = time.perf_counter()
    result = {"arms": args.arms, "seeds": seeds, "epochs": epochs, "size": SIZE, "clutter": CLUTTER,
              "images": len(specs["single-label"]["data"][0]) + len(specs["single-label"]["data"][1]),
              "train_images": len(specs["single-label"]["data"][0]),
              "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads for training",
              "runs": {t: {a: [] for a in args.arms} for t in specs},
              "controls": {t: random_control(s["data"][1], t) for t, s in specs.items()}}
    for task, spec in specs.items():
        for arm in args.arms:
            for seed in range(seeds):
                start = time.perf_counter()
                result["runs"][task][arm].append(train_and_score(arm, task, spec, seed, epochs))
                r = result["runs"][task][arm][-1]
                print(f"{task:<13} {arm:<10} seed {seed}: {spec['metric_name']} {r['score']:.3f}  "
                      f"peak on object {r['looks'] if r['looks'] is None else round(r['looks'], 3)}  "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
    result["costs"] = costs(args.arms, repeats=3 if args.quick else 15, batch=64)
    result["elapsed_s"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
