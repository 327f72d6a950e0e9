"""Each sample's seeded uniforms, drawn from its own generator a block at a time (issue 19).

The transformers backend samples a row's token from one uniform of that row's generator per step, so a sample
does not depend on its batch. One `torch.rand` call per row per step was ~2% of a toy decode step; a CPU
generator's block of n uniforms is the same n numbers it draws one by one (tests/test_hf_backend.py).
"""

from __future__ import annotations

BLOCK = 64


class Draws:
    def __init__(self, torch, seed: int):
        self._torch = torch
        self._gen = torch.Generator().manual_seed(seed)
        self._block: list[float] = []
        self._next = 0

    def next(self) -> float:
        if self._next == len(self._block):
            self._block = self._torch.rand(BLOCK, generator=self._gen).tolist()
            self._next = 0
        self._next += 1
        return self._block[self._next - 1]
