"""One training loop for every chapter: AdamW, warm-up + cosine schedule, gradient clipping,
bf16 autocast on GPU, a progress bar, and the loss history for plotting.

Chapter 7 (training objectives) explains it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .device import autocast


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def next_token_loss(logits: Tensor, ids: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of position t's logits against token t+1: the decoder-only objective."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=ignore_index
    )


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    progress: bool = True
    log_every: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")


@dataclass
class History:
    """What a run recorded: step numbers, training losses, learning rates, and any evaluations."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: dict[int, float] = field(default_factory=dict)


def train(
    model: nn.Module,
    batches: Callable[[int], tuple] | Iterator[tuple],
    loss_fn: Callable[..., Tensor],
    config: TrainConfig | None = None,
    *,
    device: torch.device | str | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> History:
    """Train `model` for config.steps steps.

    batches: a function step -> batch (a tuple of tensors) or an iterator of batches.
    loss_fn(model, *batch) -> scalar loss tensor. evaluate(model) -> a number, every eval_every steps.
    """
    config = config or TrainConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    history = History()
    get_batch = batches if callable(batches) else (lambda _step, it=iter(batches): next(it))
    model.train()
    bar = tqdm(range(config.steps), disable=not config.progress, leave=False)
    for step in bar:
        lr = lr_at(step, max_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr=config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = tuple(t.to(device) if isinstance(t, Tensor) else t for t in get_batch(step))
        with autocast(device):
            loss = loss_fn(model, *batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower lr (now {lr:.3g}) or add warm-up")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            history.steps.append(step)
            history.losses.append(loss.item())
            history.lrs.append(lr)
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
        if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or step == config.steps - 1):
            model.eval()
            with torch.no_grad():
                history.evals[step] = float(evaluate(model))
            model.train()
    bar.close()
    model.eval()
    return history
