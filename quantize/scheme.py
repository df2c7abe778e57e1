"""What `--quant` / `--recipe` mean: a whole-file type, an expert-aware preset, or a user's recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from q35local.base.errors import InputError

from .plan import FTYPES, OutType
from .recipes import Recipe, load_preset, load_recipe, preset_names
from .stock import STOCK

WHOLE_FILE = [t.value for t in OutType]  # as llama.cpp's converter writes them


@dataclass(frozen=True)
class Scheme:
    label: str
    out: OutType  # the planner's whole-file type (and the mmproj's); a recipe then retypes tensors
    recipe: Recipe | None
    file_type: int
    stock: str | None = None  # one of llama.cpp's own mixtures

    @property
    def mmproj_out(self) -> OutType:
        """The vision projector's type: the file type, except that the stock mixtures (planned from F32
        so that every tensor can take llama-quantize's type) ship it in F16 as everyone does."""
        return OutType.F16 if self.stock else self.out


def choices() -> list[str]:
    return WHOLE_FILE + preset_names() + list(STOCK)


def resolve(quant: str | None, recipe_path: Path | None) -> Scheme:
    if recipe_path is not None:
        r = load_recipe(recipe_path)
        return Scheme(r.name, OutType.Q8_0, r, r.file_type)
    quant = (quant or "Q8_0").upper()
    if quant in WHOLE_FILE:
        t = OutType(quant)
        return Scheme(quant, t, None, FTYPES[quant])
    if quant in preset_names():
        r = load_preset(quant)
        return Scheme(quant, OutType.Q8_0, r, r.file_type)
    if quant in STOCK:
        return Scheme(quant, OutType.F32, None, FTYPES[quant], stock=quant)
    raise InputError(None, f"unknown --quant {quant!r}; choose from {', '.join(choices())}")
