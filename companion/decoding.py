"""Key/value caches for incremental decoding.

Chapter 6 (decoder inference and the KV cache) explains them.
"""
from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """One layer's self-attention keys and values, preallocated for `capacity` positions.

    Earlier tokens never change under a causal mask, so their keys and values can be kept
    and only the new positions computed.
    """

    def __init__(self, batch: int, heads: int, capacity: int, d_head: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.keys = torch.zeros(batch, heads, capacity, d_head, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.capacity = capacity
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        new = k.shape[2]
        if self.length + new > self.capacity:
            raise ValueError(
                f"the KV cache holds {self.capacity} positions; {self.length} are used and {new} more were given"
            )
        self.keys[:, :, self.length:self.length + new] = k
        self.values[:, :, self.length:self.length + new] = v
        self.length += new
        return self.stored()

    def stored(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]


class CrossKVCache:
    """Cross-attention keys and values: the projected encoder output, computed on the first step."""

    def __init__(self):
        self.kv: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return 0 if self.kv is None else self.kv[0].shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.kv = (k, v)
        return k, v

    def stored(self) -> tuple[Tensor, Tensor]:
        if self.kv is None:
            raise RuntimeError("the cross-attention cache is empty; run one decoding step first")
        return self.kv
