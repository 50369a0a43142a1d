"""Training objectives (next-token, masked LM with 80/10/10, seq2seq, classification) and the one training
loop every chapter uses: AdamW, warm-up + cosine, clipping, bf16 autocast on GPU, evaluation, a progress
bar, checkpoints that resume exactly, and distributed data parallel under `torchrun`.

Chapter 7 (training objectives) explains it.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .device import autocast

IGNORE_INDEX = -100  # cross-entropy skips targets with this value: unselected MLM positions, padding


# ---------------------------------------------------------------- objectives


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def next_token_loss(logits: Tensor, ids: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy of position t's logits against token t+1: the decoder-only objective."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=ignore_index
    )


def mask_tokens(
    ids: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    select_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking (Devlin et al. 2019): select select_prob of the non-special tokens; of those, 80%
    become mask_id, 10% a random non-special token, 10% stay. Returns (inputs, labels); labels hold the
    original token at selected positions and IGNORE_INDEX elsewhere, so only selected positions are scored.
    """
    if not 0.0 < select_prob <= 1.0:
        raise ValueError(f"select_prob={select_prob} must be in (0, 1]")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
    special = torch.tensor(sorted(set(special_ids) | {mask_id}), dtype=ids.dtype)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in set(special.tolist())], dtype=ids.dtype)
    if len(ordinary) == 0:
        raise ValueError("every token id is special: nothing is left to select or to draw random tokens from")
    can_select = ~torch.isin(ids, special.to(ids.device))
    draw = lambda: torch.rand(ids.shape, generator=generator).to(ids.device)  # noqa: E731
    selected = (draw() < select_prob) & can_select
    action = draw()  # one draw decides mask (< 0.8), random (< 0.9) or keep
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)].to(ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy at the selected positions only (labels != IGNORE_INDEX): the encoder-only objective."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def perplexity(mean_loss: float) -> float:
    """exp of the mean per-token cross-entropy (in nats): the number of equally likely tokens it amounts to."""
    return math.exp(mean_loss)


def mean_pool(hidden: Tensor, keep: Tensor) -> Tensor:
    """(batch, seq, d_model) -> (batch, d_model): the average over positions where keep is True (not padding)."""
    weights = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class SequenceClassifier(nn.Module):
    """An encoder, mean pooling over the non-pad positions, and a linear head: the fine-tuning model."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        if not hasattr(encoder, "encode"):
            raise TypeError(f"SequenceClassifier needs an encoder with .encode(ids) (an EncoderLM or a DecoderLM), got {type(encoder).__name__}")
        self.encoder = encoder
        self.pad_id = encoder.config.pad_id
        self.head = nn.Linear(encoder.config.d_model, num_labels)

    def forward(self, ids: Tensor) -> Tensor:
        keep = torch.ones_like(ids, dtype=torch.bool) if self.pad_id is None else ids != self.pad_id
        return self.head(mean_pool(self.encoder.encode(ids), keep))


# Loss functions in the form train() calls: loss_fn(model, *batch) -> scalar.

def next_token_objective(model: nn.Module, ids: Tensor) -> Tensor:
    return next_token_loss(model(ids), ids)


def mlm_objective(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return mlm_loss(model(inputs), labels)


def seq2seq_objective(model: nn.Module, src: Tensor, tgt: Tensor) -> Tensor:
    """Teacher forcing: the decoder reads tgt[:, :-1] (starting with a start token) and predicts tgt[:, 1:]."""
    logits = model(src, tgt[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)


def classify_objective(model: nn.Module, ids: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(model(ids), labels)


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[tuple], loss_fn: Callable[..., Tensor], *, device=None) -> float:
    """The mean of loss_fn over batches (give equal-sized batches), in eval mode and without gradients."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with autocast(device):
            total += float(loss_fn(model, *(t.to(device) if isinstance(t, Tensor) else t for t in batch)))
        count += 1
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss got no batches; the validation split is too small for one batch")
    return total / count


# ---------------------------------------------------------------- the loop


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
        if self.log_every < 1:
            raise ValueError(f"log_every={self.log_every} must be at least 1")


@dataclass
class History:
    """What a run recorded: step numbers, training losses, learning rates, and any evaluations."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: dict[int, float] = field(default_factory=dict)


def init_distributed() -> tuple[int, int]:
    """(rank, world_size). Under torchrun (WORLD_SIZE > 1) join the process group once: NCCL on CUDA, gloo on CPU."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(batch: tuple, rank: int, world: int) -> tuple:
    """This process's contiguous share of the global batch (every tensor split along dim 0)."""
    if world == 1:
        return batch
    out = []
    for t in batch:
        if isinstance(t, Tensor):
            if t.shape[0] % world:
                raise ValueError(f"a batch of {t.shape[0]} does not split evenly over {world} processes; use a multiple of {world}")
            t = t.chunk(world)[rank]
        out.append(t)
    return tuple(out)


def _comparable(config: TrainConfig) -> dict:
    """The settings that change the result (not how progress is shown)."""
    d = asdict(config)
    d.pop("progress"), d.pop("log_every")
    d["betas"] = tuple(d["betas"])
    return d


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in keys if saved.get(k) != current.get(k)]


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    history: History, config: TrainConfig) -> None:
    """Everything needed to continue exactly: weights, optimizer moments, step, history, RNG states.

    Written to a temporary file and renamed, so a crash never leaves half a checkpoint in place.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    model_config = getattr(model, "config", None)
    state = {
        "format": 1, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "model_config": asdict(model_config) if model_config is not None else None,
        "train_config": _comparable(config), "history": asdict(history),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    config: TrainConfig | None = None) -> tuple[int, History]:
    """Restore a checkpoint into model (and optimizer, RNG states); return (next step, history).

    Refuses, before changing anything, a checkpoint written for another model or training config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = getattr(model, "module", model)
    model_config = getattr(model, "config", None)
    problems = []
    if model_config is not None and state["model_config"] is not None:
        problems += _differences(state["model_config"], asdict(model_config))
    if config is not None:
        problems += _differences(state["train_config"], _comparable(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved_shapes = {k: tuple(v.shape) for k, v in state["model"].items()}
    if not problems and shapes != saved_shapes:
        problems.append("the parameter names or shapes differ")
    if problems:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by another run: " + "; ".join(problems[:6])
            + ". Nothing was loaded and no file was changed; use a new checkpoint path or the same configs."
        )
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if torch.cuda.is_available() and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    h = state["history"]
    return state["step"], History(list(h["steps"]), list(h["losses"]), list(h["lrs"]), dict(h["evals"]))


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
    checkpoint: str | Path | None = None,
    save_every: int = 0,
) -> History:
    """Train `model` for config.steps steps.

    batches: a function step -> batch (a tuple of tensors) or an iterator of batches.
    loss_fn(model, *batch) -> scalar loss tensor. evaluate(model) -> a number, every eval_every steps.
    checkpoint: a file; if it exists, training resumes from it exactly (batches must then be a function
    of the step); it is written every save_every steps and at the end.
    Under torchrun each process takes its share of the global batch and DDP averages the gradients,
    so the result matches one process on the whole batch.
    """
    config = config or TrainConfig()
    rank, world = init_distributed()
    if device is None and world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    if checkpoint is not None and not callable(batches):
        raise ValueError("checkpoints need batches as a function step -> batch, so a resumed run sees the same data")
    start, history = 0, History()
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = load_checkpoint(checkpoint, model, optimizer, config)
    get_batch = batches if callable(batches) else (lambda _step, it=iter(batches): next(it))
    runner = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    runner.train()
    bar = tqdm(range(start, config.steps), disable=not config.progress or rank != 0, leave=False,
               initial=start, total=config.steps)
    for step in bar:
        lr = lr_at(step, max_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr=config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _shard(tuple(t.to(device) if isinstance(t, Tensor) else t for t in get_batch(step)), rank, world)
        with autocast(device):
            loss = loss_fn(runner, *batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower lr (now {lr:.3g}) or add warm-up")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP this also averages the gradients over processes
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            value = loss.detach().float()
            if world > 1:
                dist.all_reduce(value)  # gloo has no AVG: sum, then divide
                value = value / world
            history.steps.append(step)
            history.losses.append(value.item())
            history.lrs.append(lr)
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
        if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or step == config.steps - 1):
            model.eval()
            with torch.no_grad():
                history.evals[step] = float(evaluate(model))
            model.train()
        last = step == config.steps - 1
        if checkpoint is not None and ((save_every and (step + 1) % save_every == 0) or last):
            if rank == 0:
                save_checkpoint(checkpoint, model, optimizer, step=step + 1, history=history, config=config)
            if world > 1:
                dist.barrier()
    bar.close()
    model.eval()
    return history
