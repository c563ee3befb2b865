"""Seeded, deterministic CPU training with the options the paper's factors need.

:func:`train` runs mini-batch training (Adam or SGD, step decay, coupled L2 weight decay (on all
parameters, or with ``decay_bias_bn=False`` on the kernels only, like Keras ``l2``),
dropout/BN from the model, early stopping on a held-out validation split) and calls back at
checkpoint epochs (epoch 0 = before any update). :func:`paper_mlp` is the paper's MLP recipe.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from torch import nn

from activation_hash.experiments.datasets import DataSplit, stratified_split
from activation_hash.validation import check_choice, check_int

__all__ = ["TrainConfig", "TrainResult", "train", "paper_mlp", "preset_options", "paper_checkpoints",
           "log_checkpoints", "accuracy", "predict", "make_optimizer", "split_decay"]


@dataclass
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: maximum number of epochs.
        batch_size, optimizer (``"adam"`` | ``"sgd"``), lr, momentum (SGD).
        weight_decay: coupled L2: ``weight_decay * w`` is added to each gradient (Keras
            ``l2(c)`` equals ``weight_decay = 2c``).
        decay_bias_bn: whether ``weight_decay`` also applies to biases and to the parameters
            of normalization layers (BatchNorm, LayerNorm, GroupNorm). True (PyTorch's usual
            single parameter group) by default; False decays the kernels (Linear/conv weights)
            only, as a Keras ``kernel_regularizer=l2(c)`` does (:func:`paper_mlp`).
        lr_step / lr_gamma: multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs
            (0: constant).
        val_fraction: stratified part of the training set held out for validation (0: none).
        patience: stop when validation accuracy has not improved for this many epochs
            (None/0: never; needs ``val_fraction > 0``).
        restore_best: after early stopping, reload the weights of the best validation epoch.
        epoch_size: samples per epoch (None: the training set once). Larger values tile the
            shuffled set, so small sample sizes get about as many steps per epoch as big ones.
        seed: seeds the weights, shuffling, dropout and the validation split.
        checkpoints: epochs at which ``on_checkpoint`` is called (0 = before training).
    """

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_bias_bn: bool = True
    lr_step: int = 0
    lr_gamma: float = 0.1
    val_fraction: float = 0.0
    patience: int | None = None
    restore_best: bool = False
    epoch_size: int | None = None
    seed: int = 0
    checkpoints: list[int] | None = None

    def __post_init__(self):
        self.optimizer = check_choice(self.optimizer, "optimizer", ("adam", "sgd"))
        self.epochs = check_int(self.epochs, "epochs", min=0)
        self.batch_size = check_int(self.batch_size, "batch_size", min=1)
        if self.patience and not self.val_fraction:
            raise ValueError("early stopping (patience) needs a validation split: set val_fraction > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def paper_mlp(**overrides) -> TrainConfig:
    """The paper's MLP recipe (He et al., arXiv 2101.05490, as the authors' code sets it): Adam lr 1e-2 decayed x0.1 every 20 epochs,
    batch 64, up to 200 epochs, early stopping with patience 10 on an 80/20 validation split,
    L2 1e-6 (Keras) = weight_decay 2e-6 on the kernels only (``decay_bias_bn=False``: no decay
    of biases and BatchNorm parameters, as Keras ``kernel_regularizer``), checkpoints
    {0, 1, 3, 6, 10, 20, ..., 200}.
    Use with ``MLP(..., batch_norm=True)`` (Dense -> BN -> ReLU)."""
    cfg = dict(epochs=200, batch_size=64, optimizer="adam", lr=1e-2, lr_step=20, lr_gamma=0.1,
               weight_decay=2e-6, decay_bias_bn=False, val_fraction=0.2, patience=10, checkpoints=paper_checkpoints(200))
    cfg.update(overrides)
    return TrainConfig(**cfg)


def preset_options(preset: str = "none", **overrides) -> dict:
    """:class:`TrainConfig` options (a dict, validated) of ``preset``: ``"paper_mlp"``
    (:func:`paper_mlp` without its checkpoints) or ``"none"`` (20 epochs at lr 0.01, the
    command line's defaults), with every override that is not None."""
    preset = check_choice(preset, "preset", ("none", "paper_mlp"))
    base = paper_mlp().to_dict() if preset == "paper_mlp" else {"epochs": 20, "lr": 1e-2}
    base.pop("checkpoints", None)
    base.update({k: v for k, v in overrides.items() if v is not None})
    TrainConfig.from_dict(base)
    return base


def paper_checkpoints(max_epoch: int) -> list[int]:
    """The paper's checkpoint epochs ``{0, 1, 3, 6, 10, 20, 30, ...}`` up to ``max_epoch``."""
    out = [e for e in (0, 1, 3, 6) if e <= max_epoch]
    out += list(range(10, max_epoch + 1, 10))
    if max_epoch not in out:
        out.append(max_epoch)
    return out


def log_checkpoints(max_epoch: int, n: int = 8) -> list[int]:
    """``0`` plus about ``n`` log-spaced epochs in ``[1, max_epoch]`` (distinct, sorted)."""
    import numpy as np

    if max_epoch < 1:
        return [0]
    pts = np.unique(np.round(np.geomspace(1, max_epoch, max(n, 2))).astype(int))
    return [0] + [int(p) for p in pts]


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch ``history`` (epoch, loss, train_acc, val_acc, lr,
    seconds), the epoch training ``stopped`` at, final ``train_accuracy`` (on the samples trained
    on) / ``test_accuracy``, and the indices of the training samples actually used (``train_idx``,
    the rest of the training set was the validation split)."""

    history: list[dict] = field(default_factory=list)
    stopped: int = 0
    train_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    val_accuracy: float = float("nan")
    train_idx: torch.Tensor | None = None
    seconds: float = 0.0


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def split_decay(model: nn.Module) -> tuple[list, list]:
    """The trainable parameters of ``model`` as ``(kernels, others)``: ``others`` are the
    biases and the parameters of normalization layers, ``kernels`` everything else (the
    weights of Linear / conv layers)."""
    kernels, others, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (others if isinstance(module, _NORMS) or name == "bias" else kernels).append(p)
    return kernels, others


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s trainable parameters: one parameter group
    with ``weight_decay``, or (``decay_bias_bn=False``) the kernels with it and the biases /
    normalization parameters with ``weight_decay=0``."""
    if config.decay_bias_bn:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": config.weight_decay}]
    else:
        kernels, others = split_decay(model)
        groups = [g for g in ({"params": kernels, "weight_decay": config.weight_decay},
                              {"params": others, "weight_decay": 0.0}) if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes int64 ``[N]`` in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    out = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y`` (eval mode)."""
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x) == y).float().mean())


def train(model: nn.Module, data: DataSplit, config: TrainConfig | dict | None = None, *,
          on_checkpoint: Callable[[int, nn.Module, TrainResult], None] | None = None,
          progress: bool = False) -> TrainResult:
    """Train ``model`` on ``data.x_train/y_train`` (CPU, deterministic for a given seed).

    ``on_checkpoint(epoch, model, result_so_far)`` is called (model in eval mode) at each epoch
    of ``config.checkpoints`` that is reached, epoch 0 before training. Seeds torch's global RNG
    with ``config.seed`` (for dropout); build the model after ``torch.manual_seed`` for seeded
    weights. Returns a :class:`TrainResult`.
    """
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    if config.val_fraction:
        tr_idx, val_idx = stratified_split(data.y_train, config.val_fraction, config.seed)
    else:
        tr_idx, val_idx = torch.arange(len(data.y_train)), torch.zeros(0, dtype=torch.int64)
    x, y = data.x_train[tr_idx], data.y_train[tr_idx]
    xv, yv = data.x_train[val_idx], data.y_train[val_idx]
    n = len(y)
    if n == 0:
        raise ValueError("no training samples left after the validation split")
    opt = make_optimizer(model, config)
    sched = torch.optim.lr_scheduler.StepLR(opt, config.lr_step, config.lr_gamma) \
        if config.lr_step else None
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult(train_idx=tr_idx)
    checkpoints = set(config.checkpoints or [])

    def checkpoint(epoch: int) -> None:
        if on_checkpoint is not None and epoch in checkpoints:
            model.eval()
            on_checkpoint(epoch, model, result)

    checkpoint(0)
    best, best_state, since_best = -1.0, None, 0
    epoch_size = config.epoch_size or n
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs, desc="train", leave=False)
    for epoch in range(1, config.epochs + 1):
        te = time.perf_counter()
        model.train()
        reps = -(-epoch_size // n)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:epoch_size]
        total, correct, seen = 0.0, 0, 0
        for i in range(0, epoch_size, config.batch_size):
            b = order[i:i + config.batch_size]
            if len(b) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                  for m in model.modules()):
                continue  # BatchNorm cannot train on a batch of one
            opt.zero_grad(set_to_none=True)
            out = model(x[b])
            loss = loss_fn(out, y[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            correct += int((out.argmax(1) == y[b]).sum())
            seen += len(b)
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        val_acc = accuracy(model, xv, yv) if len(yv) else float("nan")
        result.history.append({"epoch": epoch, "loss": total / max(seen, 1),
                               "train_acc": correct / max(seen, 1), "val_acc": val_acc, "lr": lr,
                               "seconds": time.perf_counter() - te})
        result.stopped = epoch
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
        stop = False
        if config.patience and len(yv):
            if val_acc > best:
                best, since_best = val_acc, 0
                if config.restore_best:
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                stop = since_best >= config.patience
        checkpoint(epoch)
        if stop:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    # Checkpoints past an early stop see the final model (the paper's runs keep the last one).
    for e in sorted(checkpoints):
        if result.stopped < e <= config.epochs and on_checkpoint is not None:
            model.eval()
            on_checkpoint(e, model, result)
    model.eval()
    result.train_accuracy = accuracy(model, x, y)
    result.val_accuracy = accuracy(model, xv, yv) if len(yv) else float("nan")
    result.test_accuracy = accuracy(model, data.x_test, data.y_test)
    result.seconds = time.perf_counter() - t0
    return result
