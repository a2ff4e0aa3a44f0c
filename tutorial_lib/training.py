"""A small, deterministic training loop: ``fit`` and ``evaluate``.

Made for notebooks under strict nbval: the live progress bar is a Jupyter widget (nbval does
not compare widgets; its text form is constant), and the only printed text is one line per
epoch with rounded numbers, which is the same on every run with the same seed and thread
count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["History", "fit", "evaluate"]


@dataclass
class History:
    """Per-epoch training loss and accuracies recorded by ``fit``."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)

    @property
    def final_val_accuracy(self) -> float | None:
        return self.val_accuracy[-1] if self.val_accuracy else None


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # No rate or elapsed time in the text: only the widget changes as training goes.
    return tqdm(total=total, desc=desc, leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 256) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``data`` (eval mode, no grad).

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    loss_sum, correct, count = 0.0, 0, 0
    device = next(model.parameters()).device
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def fit(model: nn.Module, train: Dataset, *, val: Dataset | None = None, epochs: int = 5,
        batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0, seed: int = 0,
        progress: bool = True, verbose: bool = True, desc: str = "training") -> History:
    """Train ``model`` with Adam and cross-entropy; return the per-epoch ``History``.

    Shuffling uses its own generator seeded by ``seed``, so two calls with the same seed,
    model initialisation and thread count give the same numbers. With ``verbose`` one line
    is printed per epoch (loss to 4 decimals, accuracies to 3). ``progress`` shows a bar
    (a widget in Jupyter, a text bar elsewhere).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit: expected epochs >= 1 and batch_size >= 1, but got epochs={epochs}, "
                         f"batch_size={batch_size}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    history = History()
    bar = _progress(epochs * len(loader), desc, progress)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum, correct, count = 0.0, 0, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = nn.functional.cross_entropy(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(dim=1) == y).sum().item()
                count += len(y)
                if bar is not None:
                    bar.update(1)
            history.train_loss.append(loss_sum / count)
            history.train_accuracy.append(correct / count)
            line = (f"epoch {epoch}/{epochs}  loss {history.train_loss[-1]:.4f}  "
                    f"train acc {history.train_accuracy[-1]:.3f}")
            if val is not None:
                history.val_accuracy.append(evaluate(model, val)["accuracy"])
                line += f"  val acc {history.val_accuracy[-1]:.3f}"
            if verbose:
                print(line)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history
