"""Training objectives (next-token, masked LM with 80/10/10, seq2seq, classification) and the one training
loop every chapter uses: AdamW, warm-up + cosine, clipping, bf16 autocast on GPU, evaluation, a progress
bar, checkpoints that resume exactly, and distributed data parallel under `torchrun`. The loss is the
module's own stable `cross_entropy` (a log-sum-exp minus the target's logit), the clipping its own
`clip_gradients`.

Chapter 7 (training objectives) explains it.
"""

from __future__ import annotations

import math
import os
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import IGNORE_INDEX  # defined with the targets it marks; training.IGNORE_INDEX is the same
from .device import autocast, check_device, check_values
from .validation import expect, flag, fraction, is_number, is_whole, one_of, positive_number, whole_number

# ---------------------------------------------------------------- softmax, cross-entropy, clipping


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along dim, computed as exp(x - max) / sum(exp(x - max)).

    Subtracting each row's largest value changes nothing mathematically (it cancels in the ratio) but
    keeps every exp(.) in [0, 1]: logits of 1000 would overflow exp to inf, and inf / inf is NaN.
    A row that is all -inf (every position masked) gives zeros instead of NaN.
    """
    exp = _shifted(x, dim).exp()
    total = exp.sum(dim=dim, keepdim=True)
    return exp / torch.where(total > 0, total, torch.ones_like(total))


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log(softmax(x)) without ever forming the small probabilities: (x - max) - log(sum(exp(x - max)))."""
    shifted = _shifted(x, dim)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def _shifted(x: Tensor, dim: int) -> Tensor:
    """x minus its largest value along dim (0 where that is not finite: an all -inf row stays -inf)."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"softmax takes a floating-point tensor, got {_described(x)}")
    top = x.amax(dim=dim, keepdim=True)
    return x - torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The mean over targets of -log softmax(logits)[target], skipping targets equal to ignore_index.

    logits: (..., vocab), any floating dtype (half precision is computed in float32); targets: (...)
    integer ids. Equal to `torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))`.

    -log softmax(z)[t] = log(sum_j exp(z_j)) - z_t, so the loss is a log-sum-exp minus the target's
    logit, and the probabilities are never formed. `torch.logsumexp` subtracts the largest logit before
    exp (as `softmax` here does), so any finite logits give a finite loss; and only one number per row
    is kept for the backward pass, not a second (..., vocab) tensor. NaN when every target is ignored.
    """
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point or logits.dim() < 1:
        raise TypeError(
            f"cross_entropy: logits must be a floating-point tensor (..., vocab), got {_described(logits)}"
        )
    if not isinstance(targets, Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"cross_entropy: targets must be a tensor of integer ids, got {_described(targets)}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"cross_entropy: targets has shape {tuple(targets.shape)}, logits {tuple(logits.shape)}; "
            f"targets must be logits' shape without the last (vocab) axis, {tuple(logits.shape[:-1])}"
        )
    vocab = logits.shape[-1]
    keep = targets != ignore_index
    # Reading the ids back: on an accelerator it would wait on the device, and compiled code skips it
    # (it would break the graph; check_values).
    if targets.device.type == "cpu" and check_values() and keep.any():
        low, high = int(targets[keep].min()), int(targets[keep].max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"cross_entropy: targets hold ids in [{low}, {high}] but the logits cover [0, {vocab - 1}] "
                f"(and ignore_index={ignore_index} is skipped)"
            )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target_logit = logits.gather(-1, torch.where(keep, targets, 0).long().unsqueeze(-1)).squeeze(-1)
    per_token = torch.logsumexp(logits, dim=-1) - target_logit
    return (per_token * keep).sum() / keep.sum()


def _described(x) -> str:
    return f"<{x.dtype} tensor of shape {tuple(x.shape)}>" if isinstance(x, Tensor) else type(x).__name__


def gradient_norm(parameters: Iterable[Tensor]) -> Tensor:
    """The 2-norm of all the gradients together, as if they were one long vector (parameters without a
    gradient are skipped): sqrt of the sum of every gradient entry squared."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    low = (torch.float16, torch.bfloat16)  # summed in float32: half-precision squares overflow and round
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float() if g.dtype in low else g) for g in grads])
    )


def clip_gradients(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale every gradient by the same factor so that their joint norm is at most max_norm; return the
    norm before clipping. Equal to `torch.nn.utils.clip_grad_norm_(parameters, max_norm)`.

    One factor for all of them keeps the update's direction; only its length is capped, so one bad batch
    cannot throw the weights far. The 1e-6 keeps the division finite when the gradients are all zero.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    positive_number("max_norm", max_norm, "e.g. 1.0")
    parameters = [p for p in parameters if p.grad is not None]
    total = gradient_norm(parameters)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.detach().mul_(scale.to(p.grad.device, p.grad.dtype))
    return total


# ---------------------------------------------------------------- objectives


SCHEDULES = ("cosine", "inverse-sqrt")


def lr_at(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """The learning rate at step (counting from 0). Both schedules warm up linearly to max_lr over
    warmup_steps. "cosine": then cosine decay to min_lr at total_steps. "inverse-sqrt" (the original
    Transformer's): then decay as 1/sqrt(step), max_lr * sqrt(warmup_steps / (step + 1)), with no end.
    """
    one_of("schedule", schedule, SCHEDULES)
    if schedule == "inverse-sqrt":
        whole_number("warmup_steps", warmup_steps, note="inverse-sqrt peaks at the end of warm-up")
        n = step + 1  # the paper counts steps from 1
        return max_lr * min(math.sqrt(warmup_steps / n), n / warmup_steps)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def inverse_sqrt_lr(step_num: int, *, d_model: int, warmup_steps: int) -> float:
    """Vaswani et al. (2017), eq. 3: d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5),
    step_num counting from 1. It peaks at step_num = warmup_steps, at (d_model * warmup_steps)^-0.5;
    lr_at(step_num - 1, schedule="inverse-sqrt", max_lr=that peak) is the same rate."""
    for name, value in (("step_num", step_num), ("d_model", d_model), ("warmup_steps", warmup_steps)):
        whole_number(name, value)
    return d_model**-0.5 * min(step_num**-0.5, step_num * warmup_steps**-1.5)


def smoothed_cross_entropy(
    logits: Tensor, targets: Tensor, smoothing: float = 0.1, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Cross-entropy against a label-smoothed target (Szegedy et al. 2016; Vaswani et al. 2017 use 0.1):
    1 - smoothing on the true token plus smoothing spread evenly over all vocab tokens, so
    loss = (1 - smoothing) * (-log p[target]) + smoothing * mean over tokens of (-log p).
    logits (..., vocab), targets (...); positions whose target is ignore_index are skipped. The
    same as F.cross_entropy(..., label_smoothing=smoothing), written out."""
    fraction("smoothing", smoothing)  # the share of the target spread over the whole vocabulary
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits have shape {tuple(logits.shape)} and targets {tuple(targets.shape)}; "
            "expected logits (..., vocab) and targets (...)"
        )
    log_p = logits.float().log_softmax(dim=-1).reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    if not keep.any():
        raise ValueError(f"every target is ignore_index={ignore_index}: there is nothing to score")
    log_p, targets = log_p[keep], targets[keep]
    true = -log_p.gather(1, targets[:, None]).squeeze(1)
    spread = -log_p.mean(dim=-1)
    return ((1.0 - smoothing) * true + smoothing * spread).mean()


def next_token_loss(
    logits: Tensor, ids: Tensor, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy of position t's logits against token t+1: the decoder-only objective.
    label_smoothing: see smoothed_cross_entropy (0: plain cross-entropy)."""
    fraction("label_smoothing", label_smoothing)
    if label_smoothing == 0.0:
        return cross_entropy(logits[:, :-1], ids[:, 1:], ignore_index=ignore_index)
    return smoothed_cross_entropy(logits[:, :-1], ids[:, 1:], label_smoothing, ignore_index)


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
    expect(
        is_number(select_prob) and 0.0 < select_prob <= 1.0, "select_prob", select_prob, "a number in (0, 1]"
    )
    expect(0 <= mask_id < vocab_size, "mask_id", mask_id, f"an id in the vocabulary [0, {vocab_size})")
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
    return cross_entropy(logits, labels)


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
        if not hasattr(encoder, "hidden_states"):
            raise TypeError(
                f"SequenceClassifier needs a model with .hidden_states(ids) (an EncoderLM or a DecoderLM), "
                f"got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.pad_id = encoder.config.pad_id
        self.head = nn.Linear(encoder.config.d_model, num_labels)

    def forward(self, ids: Tensor) -> Tensor:
        keep = torch.ones_like(ids, dtype=torch.bool) if self.pad_id is None else ids != self.pad_id
        return self.head(mean_pool(self.encoder.hidden_states(ids), keep))


# Loss functions in the form train() calls: loss_fn(model, *batch) -> scalar.


def next_token_objective(model: nn.Module, ids: Tensor) -> Tensor:
    return next_token_loss(model(ids), ids)


def mlm_objective(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return mlm_loss(model(inputs), labels)


def seq2seq_objective(model: nn.Module, src: Tensor, tgt: Tensor) -> Tensor:
    """Teacher forcing: the decoder reads tgt[:, :-1] (starting with a start token) and predicts tgt[:, 1:]."""
    logits = model(src, tgt[:, :-1])
    return cross_entropy(logits, tgt[:, 1:])


def classify_objective(model: nn.Module, ids: Tensor, labels: Tensor) -> Tensor:
    return cross_entropy(model(ids), labels)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`with evaluating(model):` runs the block in eval mode (no dropout), then puts the model back in the
    mode it was in, training or not, even when the block raises.

        with evaluating(model), torch.no_grad():
            accuracy = (model(ids).argmax(-1) == targets).float().mean()
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Iterable[tuple], loss_fn: Callable[..., Tensor], *, device=None
) -> float:
    """The mean of loss_fn over batches (give equal-sized batches), in eval mode and without gradients."""
    device = check_device(device) if device is not None else next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model):
        for batch in batches:
            batch = _check_batch(batch, f"batch {count}")
            with autocast(device):
                loss = _check_loss(
                    loss_fn(model, *(t.to(device) if isinstance(t, Tensor) else t for t in batch)),
                    need_grad=False,
                )
            total += float(loss)
            count += 1
    if count == 0:
        raise ValueError("evaluate_loss got no batches; the validation split is too small for one batch")
    return total / count


# ---------------------------------------------------------------- the loop


@dataclass
class TrainConfig:
    """How train() runs. Checked when made, and again when train() starts (the fields can be reassigned).

    max_loss_ratio: stop with FloatingPointError once a loss exceeds this multiple of the run's first loss
    (the run has diverged, even if the loss is still finite); None turns the check off.
    schedule: "cosine" (warm-up, then cosine decay to min_lr) or "inverse-sqrt" (the original
    Transformer's: warm-up, then lr * sqrt(warmup_steps / step); min_lr must stay 0). eps: Adam's
    epsilon (the original used 1e-9 with betas (0.9, 0.98)).
    """

    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    progress: bool = True
    log_every: int = 1
    max_loss_ratio: float | None = 100.0
    schedule: str = "cosine"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot train."""

        def need(ok: bool, name: str, expected: str) -> None:
            expect(ok, f"TrainConfig.{name}", getattr(self, name), expected)

        whole_number("TrainConfig.steps", self.steps)
        need(
            is_whole(self.warmup_steps) and 0 <= self.warmup_steps <= self.steps,
            "warmup_steps",
            f"a whole number in [0, steps={self.steps}]",
        )
        positive_number("TrainConfig.lr", self.lr)
        need(
            is_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
            "min_lr",
            f"a finite number in [0, lr={self.lr}]: the rate decays from lr down to min_lr",
        )
        need(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        need(
            self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip > 0),
            "grad_clip",
            "a positive number or None (no clipping)",
        )
        need(
            isinstance(self.betas, (tuple, list))
            and len(self.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "betas",
            "a pair of numbers in [0, 1), Adam's (beta1, beta2) such as (0.9, 0.95)",
        )
        flag("TrainConfig.progress", self.progress)
        whole_number("TrainConfig.log_every", self.log_every)
        need(
            self.max_loss_ratio is None or (is_number(self.max_loss_ratio) and self.max_loss_ratio > 1),
            "max_loss_ratio",
            "a number > 1 or None (no divergence check)",
        )
        one_of("TrainConfig.schedule", self.schedule, SCHEDULES)
        if self.schedule == "inverse-sqrt":
            need(self.warmup_steps >= 1, "warmup_steps", "a whole number >= 1 with schedule='inverse-sqrt'")
            need(self.min_lr == 0, "min_lr", "0 with schedule='inverse-sqrt', which has no floor")
        positive_number("TrainConfig.eps", self.eps, "Adam's epsilon such as 1e-8")


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
                raise ValueError(
                    f"a batch of {t.shape[0]} does not split evenly over {world} processes; use a multiple of {world}"
                )
            t = t.chunk(world)[rank]
        out.append(t)
    return tuple(out)


def _comparable(config: TrainConfig) -> dict:
    """The settings that change the result (not how progress is shown)."""
    d = asdict(config)
    d.pop("progress"), d.pop("log_every"), d.pop("max_loss_ratio")  # how progress is shown; a guard
    d["betas"] = tuple(d["betas"])
    return d


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in keys if saved.get(k) != current.get(k)
    ]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    history: History,
    config: TrainConfig,
) -> None:
    """Everything needed to continue exactly: weights, optimizer moments, step, history, RNG states.

    Written to a temporary file and renamed, so a crash never leaves half a checkpoint in place.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint {str(path)!r} is a directory; give a file path such as {str(path / 'run.pt')!r}"
        )
    model = getattr(model, "module", model)  # unwrap DDP
    model_config = getattr(model, "config", None)
    state = {
        "format": 1,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": asdict(model_config) if model_config is not None else None,
        "train_config": _comparable(config),
        "history": asdict(history),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own in the same directory (so the rename is atomic, and two writers never
    # share one), flushed to disk before it replaces the checkpoint, and removed if anything fails.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


CHECKPOINT_KEYS = ("format", "step", "model", "optimizer", "model_config", "train_config", "history", "rng")


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, or ValueError saying why the file is not a readable checkpoint."""

    def unreadable(why: str) -> ValueError:
        return ValueError(f"checkpoint {str(path)!r} is not a readable checkpoint: {why}. Nothing was loaded")

    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint {str(path)!r} is a directory, not a checkpoint file; give the file inside it"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise unreadable("the file is empty (0 bytes), as a write cut off at the start leaves it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # torch reports a damaged file in many ways: OSError, EOFError, RuntimeError, ...
        text = str(error).strip()
        detail = text.splitlines()[0].split(". ")[0][:160] if text else "no detail"
        raise unreadable(
            f"torch.load failed with {type(error).__name__} ({detail}); the file is truncated, "
            "corrupt, or not a file torch.save wrote"
        ) from error
    if not isinstance(state, dict):
        raise unreadable(f"it holds a {type(state).__name__}, not the dict that save_checkpoint writes")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise unreadable(
            f"it has no {', '.join(map(repr, missing))}, so save_checkpoint (companion.training) did not "
            "write it; a bare state_dict loads with model.load_state_dict(torch.load(path))"
        )
    if state["format"] != 1:
        raise unreadable(f"it is format {state['format']!r}; this version reads format 1")
    return state


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    config: TrainConfig | None = None,
) -> tuple[int, History]:
    """Restore a checkpoint into model (and optimizer, RNG states); return (next step, history).

    Refuses, before changing anything, a checkpoint written for another model or training config.
    """
    path = Path(path)
    state = _read_checkpoint(path)
    model = getattr(model, "module", model)
    model_config = getattr(model, "config", None)
    problems = []
    if model_config is not None and state["model_config"] is not None:
        saved = state["model_config"]
        try:  # a config saved with d_ff=None (before defaults were filled in) is compared as it builds
            saved = asdict(type(model_config)(**saved))
        except (TypeError, ValueError):
            pass
        problems += _differences(saved, asdict(model_config))
    if config is not None:
        saved = {"schedule": "cosine", "eps": 1e-8, **state["train_config"]}  # written before these existed
        problems += _differences(saved, _comparable(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved_shapes = {k: tuple(v.shape) for k, v in state["model"].items()}
    if not problems and shapes != saved_shapes:
        problems.append("the parameter names or shapes differ")
    if not problems and optimizer is not None:
        saved_groups = [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
        groups = [len(g["params"]) for g in optimizer.param_groups]
        if saved_groups != groups:
            problems.append(
                f"the optimizer has parameter groups of sizes {groups} here, {saved_groups} there"
            )
    if problems:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by another run: "
            + "; ".join(problems[:6])
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


def _check_batch(batch, where: str) -> tuple:
    """A batch is a tuple (or list) of tensors and other arguments for loss_fn; none of its tensors is empty."""
    if isinstance(batch, Tensor):
        raise TypeError(
            f"{where} is a bare tensor of shape {tuple(batch.shape)}; a batch must be a tuple, e.g. (ids,), "
            "which train passes on as loss_fn(model, *batch)"
        )
    if not isinstance(batch, (tuple, list)):
        raise TypeError(
            f"{where} is a {type(batch).__name__}; a batch must be a tuple of tensors, e.g. (ids,) or (inputs, labels)"
        )
    for t in batch:
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == 0:
            raise ValueError(
                f"{where} is empty: it holds a tensor of shape {tuple(t.shape)}; every batch needs at least one example"
            )
    return tuple(batch)


def _check_loss(loss, *, need_grad: bool = True) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"loss_fn returned a {type(loss).__name__}; it must return a scalar torch.Tensor (one number)"
        )
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}; it must return a scalar (one number), "
            "e.g. the mean over the batch (cross_entropy does this by default)"
        )
    if need_grad and not loss.requires_grad:
        raise ValueError(
            "loss_fn returned a loss that does not depend on the model's trainable weights (requires_grad=False); "
            "compute it from model(...) and not under torch.no_grad()"
        )
    return loss.reshape(())


def _nonfinite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf, or None when every weight is finite."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p.detach()).all():
            return name
    return None


def _gradient_norm(parameters: list[nn.Parameter], grad_clip: float | None) -> Tensor:
    """The total gradient norm; with grad_clip, the gradients are clipped to it as well."""
    return gradient_norm(parameters) if grad_clip is None else clip_gradients(parameters, grad_clip)


def _check_count(name: str, value) -> None:
    whole_number(name, value, 0, note="0: never")


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
    A run that diverges stops with FloatingPointError: a loss that is not finite or grows past
    config.max_loss_ratio times the first one, or gradients that are not finite (the weights are then not
    updated), or weights that are not finite.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()  # again: a TrainConfig's fields can be reassigned after it is made
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model ({type(model).__name__}) has no trainable parameters")
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a function loss_fn(model, *batch) -> scalar tensor, got {type(loss_fn).__name__}"
        )
    _check_count("eval_every", eval_every)
    _check_count("save_every", save_every)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(
            f"evaluate must be a function evaluate(model) -> number, got {type(evaluate).__name__}"
        )
    if (evaluate is None) != (eval_every == 0):
        raise ValueError(
            f"evaluate and eval_every go together: got evaluate={'a function' if evaluate else None} and "
            f"eval_every={eval_every}; give both (evaluate every eval_every steps) or neither"
        )
    if save_every and checkpoint is None:
        raise ValueError(
            f"save_every={save_every} but no checkpoint path was given; pass checkpoint='run.pt'"
        )
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise IsADirectoryError(
            f"checkpoint {str(checkpoint)!r} is a directory; give a file path such as "
            f"{str(Path(checkpoint) / 'run.pt')!r}"
        )
    bad = _nonfinite_parameter(model)
    if bad is not None:
        raise ValueError(
            f"the model's weights are not finite before training ({bad} holds NaN or inf); "
            "build the model again or load a good checkpoint"
        )
    rank, world = init_distributed()
    if device is None and world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    device = check_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    if checkpoint is not None and not callable(batches):
        raise ValueError(
            "checkpoints need batches as a function step -> batch, so a resumed run sees the same data"
        )
    start, history = 0, History()
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = load_checkpoint(checkpoint, model, optimizer, config)
    if callable(batches):
        get_batch = batches
    else:
        try:
            iterator = iter(batches)
        except TypeError:
            raise TypeError(
                f"batches must be a function step -> batch or an iterable of batches, "
                f"got {type(batches).__name__}"
            ) from None

        def get_batch(step: int):
            return next(iterator)

    reference = history.losses[0] if history.losses else None  # the run's first loss, for max_loss_ratio
    parameters = [p for p in model.parameters() if p.requires_grad]
    runner = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    runner.train()
    bar = tqdm(
        range(start, config.steps),
        disable=not config.progress or rank != 0,
        leave=False,
        initial=start,
        total=config.steps,
    )
    for step in bar:
        lr = lr_at(
            step,
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.steps,
            min_lr=config.min_lr,
            schedule=config.schedule,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            batch = get_batch(step)
        except StopIteration:
            raise ValueError(
                f"batches ran out at step {step} of config.steps={config.steps} (after {step - start} batches); "
                "give at least that many, or a function step -> batch"
            ) from None
        batch = _check_batch(batch, f"the batch for step {step}")
        batch = _shard(tuple(t.to(device) if isinstance(t, Tensor) else t for t in batch), rank, world)
        with autocast(device):
            loss = _check_loss(loss_fn(runner, *batch))
        value = loss.item()
        if not math.isfinite(value):
            bad = _nonfinite_parameter(model)
            raise FloatingPointError(
                f"the loss became {value} at step {step}; lower lr (now {lr:.3g}) or add warm-up"
                + (f" (the weights are no longer finite: {bad} holds NaN or inf)" if bad else "")
            )
        if reference is None:
            reference = value
        elif (
            config.max_loss_ratio is not None and reference > 0 and value > config.max_loss_ratio * reference
        ):
            raise FloatingPointError(
                f"the loss became {value:.4g} at step {step}, {value / reference:.3g} times the first loss "
                f"({reference:.4g}), past TrainConfig.max_loss_ratio={config.max_loss_ratio:g}: training has diverged; "
                f"lower lr (now {lr:.3g}) or add warm-up (max_loss_ratio=None turns this check off)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP this also averages the gradients over processes
        norm = _gradient_norm(parameters, config.grad_clip)
        if not torch.isfinite(norm):
            raise FloatingPointError(
                f"the gradients became {norm.item()} (their norm) at step {step}, with a finite loss of {value:.4g}; "
                f"the weights were not updated. Lower lr (now {lr:.3g}), add warm-up, "
                "or look for an overflow in loss_fn"
            )
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            logged = loss.detach().float()
            if world > 1:
                dist.all_reduce(logged)  # gloo has no AVG: sum, then divide
                logged = logged / world
            history.steps.append(step)
            history.losses.append(logged.item())
            history.lrs.append(lr)
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
        if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or step == config.steps - 1):
            with evaluating(model), torch.no_grad():
                history.evals[step] = float(evaluate(model))
        last = step == config.steps - 1
        if last or (checkpoint is not None and save_every and (step + 1) % save_every == 0):
            bad = _nonfinite_parameter(model)
            if bad is not None:
                raise FloatingPointError(
                    f"the weights became non-finite at step {step} ({bad} holds NaN or inf); "
                    f"lower lr (now {lr:.3g}) or add warm-up. Nothing was saved"
                )
        if checkpoint is not None and ((save_every and (step + 1) % save_every == 0) or last):
            if rank == 0:
                save_checkpoint(checkpoint, model, optimizer, step=step + 1, history=history, config=config)
            if world > 1:
                dist.barrier()
    bar.close()
    model.eval()
    return history
