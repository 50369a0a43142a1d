"""Offline data: byte and character tokenizers, a text corpus from the standard library, synthetic tasks.

Chapters 1, 5, 6 and 7 draw their data from here; nothing is downloaded.
"""
from __future__ import annotations

import importlib
import inspect

import torch
from torch import Tensor


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary of 256, nothing to train, every string round-trips."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One token per distinct character of a training text, plus any special tokens given."""

    def __init__(self, text: str, specials: tuple[str, ...] = ()):
        if not text:
            raise ValueError("CharTokenizer needs a non-empty text to build its vocabulary from")
        self.specials = tuple(specials)
        self.itos = list(self.specials) + sorted(set(text))
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self.stoi))
        if missing:
            raise ValueError(f"characters {missing[:10]} are not in this tokenizer's vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.itos[i] for i in ids)


STDLIB_MODULES = (
    "json", "textwrap", "collections", "functools", "itertools", "argparse", "pathlib", "string",
    "random", "statistics", "fractions", "decimal", "heapq", "bisect", "calendar", "csv", "difflib",
    "shutil", "tempfile", "logging", "inspect", "dataclasses", "enum", "typing", "email.message", "http.client",
)


def stdlib_corpus(modules: tuple[str, ...] = STDLIB_MODULES, max_chars: int | None = None) -> str:
    """English prose that every Python install has: the docstrings of some standard-library modules.

    Deterministic for a given Python version; ASCII only, so bytes and characters coincide.
    """
    seen: set[int] = set()
    parts: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module] + [v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v)]:
            doc = inspect.getdoc(obj)
            if doc and id(doc) not in seen and len(doc) > 80:
                seen.add(id(doc))
                parts.append(doc.encode("ascii", errors="ignore").decode())
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


def train_val_split(ids: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """Split a 1-D token stream: the first part trains, the last part validates."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_task_args(batch: int, length: int, vocab: int, min_vocab: int = 2) -> None:
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1")
    if length < 1:
        raise ValueError(f"length={length} must be at least 1")
    if vocab < min_vocab:
        raise ValueError(f"vocab={vocab} must be at least {min_vocab}")


def copy_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target == source: ids in [1, vocab); 0 is left free for padding or start."""
    _check_task_args(batch, length, vocab)
    src = torch.randint(1, vocab, (batch, length), generator=_generator(seed))
    return src, src.clone()


def reverse_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target the source reversed."""
    src, _ = copy_task(batch, length, vocab, seed)
    return src, src.flip(-1)


def sort_task(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(source, target) with target the source sorted ascending."""
    src, _ = copy_task(batch, length, vocab, seed)
    return src, src.sort(dim=-1).values


def recall_task(batch: int, length: int, distance: int | Tensor, vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Recall at distance: a marker token (0) is followed by a key token; `distance` positions after the
    marker the sequence ends, and the answer is the key. Filler tokens are drawn from [2, vocab).

    Returns (ids (batch, length), answer (batch,)). The marker sits at position length - 1 - distance,
    so solving the task needs information from `distance` steps back. Token 1 is never used (free
    as a query or padding token). `distance` may be an int or a (batch,) tensor of distances.
    """
    _check_task_args(batch, length, vocab, min_vocab=4)
    distances = torch.full((batch,), distance) if isinstance(distance, int) else distance.long()
    if distances.shape != (batch,):
        raise ValueError(f"distance has shape {tuple(distances.shape)}; expected an int or shape ({batch},)")
    if int(distances.min()) < 1 or int(distances.max()) > length - 1:
        raise ValueError(f"distance must be in [1, {length - 1}] for length={length}, got {distances.tolist()[:8]}")
    g = _generator(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    rows = torch.arange(batch)
    marker_pos = length - 1 - distances
    ids[rows, marker_pos] = 0
    # The key follows the marker; when distance is 1 the key is also the last token.
    answer = ids[rows, marker_pos + 1].clone()
    return ids, answer
