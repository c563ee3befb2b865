"""Layout: where each recorded layer's bits live in a code row.

A code row is the concatenation of one block per layer, in forward order. Block l holds the
``units[l]`` bits of layer l in ``ceil(units[l] / 64)`` int64 words starting at word
``word_offsets[l]``; padding bits are 0 (docs/design.md, "Bit layout").

This module is the one home of the word arithmetic (:data:`WORD_BITS`, :func:`words_for_bits`,
:func:`units_per_sample`); everything else imports it from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

WORD_BITS = 64


def words_for_bits(n: int) -> int:
    """Number of int64 words that hold ``n`` bits."""
    return (int(n) + WORD_BITS - 1) // WORD_BITS


def units_per_sample(x: torch.Tensor) -> int:
    """Units of one sample of a batched activation ``[B, *]``: the product of ``x.shape[1:]``."""
    n = 1
    for s in x.shape[1:]:
        n *= s
    return n


@dataclass(frozen=True)
class Layout:
    """Names, sizes and word offsets of the layers in a code row.

    Attributes:
        names: layer names in forward order (module paths; functional calls get
            ``"<module path>.<function>"``, repeats a ``#k`` suffix).
        shapes: per-sample activation shape of each layer (C order gives the bit order).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "shapes", tuple(tuple(int(s) for s in sh) for sh in self.shapes))
        if len(self.names) != len(self.shapes):
            raise ValueError(f"Layout needs one shape per name, got {len(self.names)} names and "
                             f"{len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"Layout layer names must be unique, got {list(self.names)}")

    @property
    def units(self) -> tuple[int, ...]:
        """Bits (hidden units) per layer."""
        out = []
        for sh in self.shapes:
            n = 1
            for s in sh:
                n *= s
            out.append(n)
        return tuple(out)

    @property
    def words_per_layer(self) -> tuple[int, ...]:
        return tuple(words_for_bits(n) for n in self.units)

    @property
    def word_offsets(self) -> tuple[int, ...]:
        """First word of each layer's block; ``word_offsets[l + 1] - word_offsets[l]`` words."""
        offsets, at = [], 0
        for w in self.words_per_layer:
            offsets.append(at)
            at += w
        return tuple(offsets)

    @property
    def total_words(self) -> int:
        return sum(self.words_per_layer)

    @property
    def total_bits(self) -> int:
        """Real (non-padding) bits in a row."""
        return sum(self.units)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, layer: int | str) -> int:
        """Position of a layer given by name or (possibly negative) index."""
        if isinstance(layer, str):
            if layer not in self.names:
                raise ValueError(f"no layer named {layer!r}; layers are {list(self.names)}")
            return self.names.index(layer)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"a layer is a name or an index, got {type(layer).__name__}")
        if not -len(self) <= layer < len(self):
            raise ValueError(f"layer index {layer} out of range for {len(self)} layers")
        return layer % len(self)

    def select(self, layers: Iterable[int | str]) -> tuple["Layout", torch.Tensor]:
        """Sub-layout of some layers (in the order given) and the word columns they take.

        Returns ``(layout, columns)``: ``codes[:, columns]`` are the codes of that layout.
        """
        idx = [self.index(layer) for layer in layers]
        if len(set(idx)) != len(idx):
            raise ValueError(f"each layer may be selected once, got {list(layers)}")
        cols = [torch.arange(self.word_offsets[i], self.word_offsets[i] + self.words_per_layer[i])
                for i in idx]
        columns = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
        return Layout(tuple(self.names[i] for i in idx), tuple(self.shapes[i] for i in idx)), columns

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))

    @classmethod
    def concat(cls, layouts: Sequence["Layout"]) -> "Layout":
        return cls(sum((lo.names for lo in layouts), ()), sum((lo.shapes for lo in layouts), ()))
