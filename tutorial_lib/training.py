"""A small, deterministic training loop: ``fit`` and ``evaluate``, and a summary over seeds.

Made for notebooks under strict nbval: the live progress bar is a Jupyter widget (nbval does
not compare widgets; its text form is constant), and the only printed text is one line per
epoch with rounded numbers, which is the same on every run with the same seed and thread
count.

Single-label classification (cross-entropy, accuracy) is the default. Other tasks pass their
own ``loss`` (for example ``torch.nn.functional.binary_cross_entropy_with_logits`` for
multi-label targets) and ``metric`` (a function of all logits and all targets of a data set,
for example mean average precision), with the metric's short name for the printed lines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .claims import format_mean_spread, mean_spread  # noqa: F401  (kept importable from here)

__all__ = ["History", "fit", "evaluate", "accuracy", "recalibrate_batchnorm", "mean_spread", "format_mean_spread"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of samples whose highest logit is the target class."""
    return (logits.argmax(dim=1) == targets).float().mean().item()


@dataclass
class History:
    """Per-epoch training loss and metrics recorded by ``fit``.

    ``metric_name`` is ``"acc"`` for the default accuracy. ``train_metric`` is the metric of
    the training batches as they were seen during the epoch (the model changing on the way);
    ``val_metric`` is measured on ``val`` after the epoch, in eval mode.
    """

    metric_name: str = "acc"
    train_loss: list[float] = field(default_factory=list)
    train_metric: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)

    @property
    def train_accuracy(self) -> list[float]:
        return self.train_metric

    @property
    def val_accuracy(self) -> list[float]:
        return self.val_metric

    @property
    def final_val(self) -> float | None:
        """The validation metric after the last epoch (None without validation data)."""
        return self.val_metric[-1] if self.val_metric else None

    @property
    def final_val_accuracy(self) -> float | None:
        return self.final_val


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # No rate or elapsed time in the text: only the widget changes as training goes.
    return tqdm(total=total, desc=desc, leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}")


def _tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (inputs, targets) tensors behind a data set, when it is a plain pair of tensors."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    images, labels = getattr(data, "images", None), getattr(data, "targets", None)
    if labels is None:
        labels = getattr(data, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        return images, labels
    return None


def _batches(data: Dataset, batch_size: int, generator: torch.Generator | None):
    """Mini-batches of (inputs, targets); shuffled with ``generator`` when one is given.

    Data sets that are a pair of tensors are sliced directly (no per-sample Python calls);
    anything else goes through a ``DataLoader``.
    """
    pair = _tensors(data)
    if pair is None:
        loader = DataLoader(data, batch_size=batch_size, shuffle=generator is not None, generator=generator)
        yield from loader
        return
    inputs, targets = pair
    n = len(targets)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield inputs[start:start + batch_size], targets[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            yield inputs[index], targets[index]


def _loss_and_metric(loss: Loss | None, metric: Metric | None, metric_name: str | None):
    loss_fn = loss if loss is not None else nn.functional.cross_entropy
    metric_fn = metric if metric is not None else accuracy
    if metric_name is None:
        metric_name = "acc" if metric is None else getattr(metric, "__name__", "metric")
    return loss_fn, metric_fn, metric_name


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 256, loss: Loss | None = None,
             metric: Metric | None = None, metric_name: str | None = None) -> dict[str, float]:
    """Mean loss and a metric of ``model`` on ``data`` (eval mode, no gradients).

    Defaults: cross-entropy and accuracy, returned as ``{"loss": ..., "accuracy": ...}``.
    With ``metric`` (a function of all logits and all targets) the second key is
    ``metric_name`` (default: the function's name). The model's train/eval mode is restored.
    """
    loss_fn, metric_fn, name = _loss_and_metric(loss, metric, metric_name)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for x, y in _batches(data, batch_size, None):
        logits.append(model(x.to(device)))
        targets.append(y.to(device))
    all_logits, all_targets = torch.cat(logits), torch.cat(targets)
    model.train(was_training)
    key = "accuracy" if metric is None else name
    return {"loss": loss_fn(all_logits, all_targets).item(), key: float(metric_fn(all_logits, all_targets))}


def fit(model: nn.Module, train: Dataset, *, val: Dataset | None = None, epochs: int = 5,
        batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0, seed: int = 0,
        loss: Loss | None = None, metric: Metric | None = None, metric_name: str | None = None,
        progress: bool = True, verbose: bool = True, desc: str = "training") -> History:
    """Train ``model`` with Adam; return the per-epoch ``History``.

    ``loss(logits, targets)`` defaults to cross-entropy and ``metric(logits, targets)`` to
    accuracy (printed as ``acc``; pass ``metric_name`` to print another short name).
    Shuffling uses its own generator seeded by ``seed``, and ``torch.manual_seed(seed)`` is
    called first (dropout and other random layers), so two calls with the same seed, model
    initialisation and thread count give the same numbers. With ``verbose`` one line is
    printed per epoch (loss to 4 decimals, metrics to 3). ``progress`` shows a bar (a widget
    in Jupyter, a text bar elsewhere). The model is left in eval mode.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit: expected epochs >= 1 and batch_size >= 1, but got epochs={epochs}, "
                         f"batch_size={batch_size}")
    loss_fn, metric_fn, name = _loss_and_metric(loss, metric, metric_name)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    history = History(metric_name=name)
    bar = _progress(epochs * math.ceil(len(train) / batch_size), desc, progress)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum, metric_sum, count = 0.0, 0.0, 0
            for x, y in _batches(train, batch_size, generator):
                x, y = x.to(device), y.to(device)
                logits = model(x)
                batch_loss = loss_fn(logits, y)
                optimiser.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimiser.step()
                loss_sum += batch_loss.item() * len(y)
                metric_sum += float(metric_fn(logits.detach(), y)) * len(y)
                count += len(y)
                if bar is not None:
                    bar.update(1)
            history.train_loss.append(loss_sum / count)
            history.train_metric.append(metric_sum / count)
            line = (f"epoch {epoch}/{epochs}  loss {history.train_loss[-1]:.4f}  "
                    f"train {name} {history.train_metric[-1]:.3f}")
            if val is not None:
                result = evaluate(model, val, loss=loss, metric=metric, metric_name=name)
                history.val_metric.append(result["accuracy" if metric is None else name])
                line += f"  val {name} {history.val_metric[-1]:.3f}"
            if verbose:
                print(line)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, *, batch_size: int = 256) -> int:
    """Recompute every BatchNorm's running statistics as exact averages over ``data``.

    In a short training run the running statistics (an exponential average with momentum 0.1,
    or 0.01 in CBAM's spatial gate) lag behind the weights, so eval mode normalises with stale
    numbers and the validation accuracy jumps from epoch to epoch. Averaging the batch
    statistics of the final weights over the training data ("precise BN") removes that lag
    without changing a weight. Returns the number of BatchNorm layers updated; the model is
    left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    device = next(model.parameters()).device
    try:
        for x, _ in _batches(data, batch_size, None):
            model(x.to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return len(norms)
