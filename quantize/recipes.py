"""Quantization recipes: which ggml type each tensor gets.

A recipe is an ordered list of rules, regex over the GGUF tensor name → ggml type, first match
wins (TOML files in assets/recipes/, or the user's own with --recipe). Tensors llama.cpp never
quantizes (vectors, norms, routers, the conv kernel) stay F32 whatever the recipe says. When a row
is not a whole number of the chosen type's blocks, llama.cpp's own fallback applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from q35local.base.errors import InputError
from q35local.base.files import read_toml
from q35local.base.validate import number

from .names import BLOCK
from .plan import FTYPES, OutTensor, always_f32

RECIPE_DIR = Path(str(files("q35local.assets"))) / "recipes"


def never_quantized(t: OutTensor) -> bool:
    return always_f32(t.name, t.shape)


# llama.cpp's fallback when ne0 is not a multiple of the type's block (tensor_type_fallback).
_FALLBACK = {
    **dict.fromkeys((T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS), T.IQ4_NL),
    **dict.fromkeys((T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0), T.Q4_0),
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}


def shape_fallback(t: T, ne0: int) -> T:
    """The type llama.cpp writes when `t` wants rows of whole blocks and ne0 is not one."""
    if ne0 % GGML_QUANT_SIZES[t][0] == 0:
        return t
    f = _FALLBACK.get(t, t if GGML_QUANT_SIZES[t][0] <= 32 else T.F16)
    return T.F16 if ne0 % GGML_QUANT_SIZES[f][0] else f


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    type: T
    why: str = ""
    layers: tuple[int, ...] | None = None  # only these main-stack layers (negative: from the end)
    optional: bool = False  # may match nothing (e.g. expert rules applied to a dense model)
    models: str | None = None  # "moe" or "dense": the rule applies to that kind of model only

    def matches(self, name: str, n_layers: int) -> bool:
        if not self.pattern.search(name):
            return False
        if self.layers is None:
            return True
        m = BLOCK.match(name)
        if not m:
            return False
        wanted = {i if i >= 0 else n_layers + i for i in self.layers}
        return int(m[1]) in wanted


_GUESSED = int(LlamaFileType.GUESSED)  # 1024: a mixture no llama_ftype names


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    description: str
    rules: tuple[Rule, ...]
    source: Path | None = None
    file_type: int = _GUESSED  # general.file_type: the llama_ftype it is closest to


def parse_type(name: str) -> T:
    try:
        return T[name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def load_recipe(path: Path) -> Recipe:
    data = read_toml(path, "no such recipe file")
    raw_rules = data.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise InputError(path, "a recipe needs at least one [[rule]]")
    rules = []
    for i, r in enumerate(raw_rules, 1):
        where = f"rule {i}"
        if not isinstance(r, dict) or "match" not in r or "type" not in r:
            raise InputError(path, f"{where} needs 'match' (a regex) and 'type' (a ggml type)")
        try:
            pattern = re.compile(str(r["match"]))
        except re.error as e:
            raise InputError(path, f"{where}: bad regex {r['match']!r} ({e})") from None
        try:
            ty = parse_type(str(r["type"]))
        except ValueError as e:
            raise InputError(path, f"{where}: {e}") from None
        layers = r.get("layers")
        if layers is not None and not (isinstance(layers, list) and all(isinstance(x, int) for x in layers)):
            raise InputError(path, f"{where}: 'layers' must be a list of layer numbers")
        unknown = set(r) - {"match", "type", "why", "layers", "optional", "models"}
        if unknown:
            raise InputError(path, f"{where}: unknown keys {sorted(unknown)}")
        models = r.get("models")
        if models not in (None, "moe", "dense"):
            raise InputError(path, f'{where}: \'models\' must be "moe" or "dense", not {models!r}')
        rules.append(
            Rule(
                pattern,
                ty,
                str(r.get("why", "")),
                tuple(layers) if layers is not None else None,
                bool(r.get("optional", False)),
                models,
            )
        )
    ft = data.get("file_type", "")
    if ft and ft not in FTYPES:
        raise InputError(path, f"file_type {ft!r} is not one of {', '.join(FTYPES)}")
    return Recipe(
        str(data.get("name", path.stem)),
        int(number(data.get("version", 1), "version", lo=1, hi=1 << 31, integer=True, where=path)),
        str(data.get("description", "")),
        tuple(rules),
        path,
        FTYPES.get(ft, _GUESSED),
    )


def preset_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_preset(name: str) -> Recipe:
    path = RECIPE_DIR / f"{name}.toml"
    if not path.exists():
        raise InputError(path, f"no preset {name!r}; presets: {', '.join(preset_names())}")
    return load_recipe(path)


@dataclass
class Assignment:
    """What applying a recipe decided, for the summary."""

    fallbacks: list[tuple[str, T, T, int]] = field(default_factory=list)  # name, wanted, written, row length

    def notes(self) -> list[str]:
        groups: dict[tuple[T, T, int], int] = {}
        for _, a, b, ne0 in self.fallbacks:
            groups[(a, b, ne0)] = groups.get((a, b, ne0), 0) + 1
        return [
            f"{n} tensor(s) with rows of {ne0}: {a.name} needs multiples of {GGML_QUANT_SIZES[a][0]}, "
            f"wrote {b.name} (llama.cpp's fallback)"
            for (a, b, ne0), n in groups.items()
        ]


def apply_recipe(tensors: list[OutTensor], recipe: Recipe, n_layers: int) -> Assignment:
    """Set each tensor's ggml type from the recipe (in place). Every rule must match something unless
    it says optional or is for the other kind of model (`models`); every quantizable tensor must
    match some rule."""
    kind = "moe" if any(t.n_experts for t in tensors) else "dense"
    active = [rule.models in (None, kind) for rule in recipe.rules]
    used = [False] * len(recipe.rules)
    out = Assignment()
    where = recipe.source or Path(f"{recipe.name}.toml")
    for t in tensors:
        if never_quantized(t):
            t.ggml_type = T.F32
            continue
        for i, rule in enumerate(recipe.rules):
            if active[i] and rule.matches(t.name, n_layers):
                used[i] = True
                wanted = rule.type
                break
        else:
            raise InputError(where, f"no rule matches tensor {t.name} (end the recipe with a catch-all rule)")
        t.ggml_type = shape_fallback(wanted, t.shape[0])
        if t.ggml_type != wanted:
            out.fallbacks.append((t.name, wanted, t.ggml_type, t.shape[0]))
    for i, rule in enumerate(recipe.rules):
        if active[i] and not used[i] and not rule.optional:
            raise InputError(
                where, f"rule {i + 1} ({rule.pattern.pattern!r} -> {rule.type.name}) matches no tensor"
            )
    return out
