"""--target-size / --target-bpw: the best recipe that fits a budget.

Start from the largest expert-aware preset that fits (or the smallest, when none does), then move
whole tensor classes one type step at a time: down, least sensitive class first, until it fits;
then up, most sensitive first, while it still fits. Sizes are exact and computed from the plan
alone (no weights read), so the search takes milliseconds even for 397B."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gguf import MODEL_TENSOR as MT
from gguf import GGMLQuantizationType as T

from q35local.base.errors import InputError
from q35local.base.units import format_size

from .names import name_regex
from .plan import OutTensor
from .recipes import Recipe, Rule, apply_recipe, load_preset, preset_names

# Least sensitive first (quantization.md: embeddings tolerate low bits; routed gate/up less than
# down; the output head, shared expert, attention and above all ssm_out least of all).
CLASSES: list[tuple[str, str]] = [
    ("token_embd", name_regex(MT.TOKEN_EMBD)),
    ("ffn_gate_up_exps", name_regex(MT.FFN_GATE_EXP, MT.FFN_UP_EXP)),
    ("ffn_gate_up", name_regex(MT.FFN_GATE, MT.FFN_UP)),
    ("ffn_down_exps", name_regex(MT.FFN_DOWN_EXP)),
    ("ffn_down", name_regex(MT.FFN_DOWN)),
    ("output", name_regex(MT.OUTPUT)),
    ("shared_expert", name_regex(MT.FFN_GATE_SHEXP, MT.FFN_UP_SHEXP, MT.FFN_DOWN_SHEXP)),
    (
        "attention",
        name_regex(MT.ATTN_Q, MT.ATTN_K, MT.ATTN_V, MT.ATTN_OUT, MT.ATTN_QKV, MT.ATTN_GATE, MT.NEXTN_EH_PROJ),
    ),
    ("ssm_out", name_regex(MT.SSM_OUT)),
]
LADDER = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0]


@dataclass(frozen=True)
class Choice:
    recipe: Recipe
    nbytes: int  # tensor data of the text model
    moves: list[str]


def _size(plan: list[OutTensor], recipe: Recipe, n_layers: int) -> int:
    trial = [replace(t) for t in plan]
    apply_recipe(trial, recipe, n_layers)
    return sum(t.nbytes for t in trial)


def _with_overrides(base: Recipe, types: dict[str, T], present: set[str]) -> Recipe:
    rules = tuple(
        Rule(re.compile(pat), types[name], f"--target: {name} at {types[name].name}", optional=True)
        for name, pat in CLASSES
        if name in types and name in present
    )
    shadowed = tuple(replace(r, optional=True) for r in base.rules)  # the overrides may shadow them
    return replace(base, name=f"{base.name}+target", rules=rules + shadowed, source=None)


def choose(plan: list[OutTensor], budget: int, overhead: int, n_layers: int) -> Choice:
    """The recipe whose file (tensor bytes + overhead for headers and alignment) fits `budget`."""
    presets = sorted((load_preset(n) for n in preset_names()), key=lambda r: _size(plan, r, n_layers))
    sizes = [_size(plan, r, n_layers) + overhead for r in presets]
    fitting = [i for i, s in enumerate(sizes) if s <= budget]
    base = presets[fitting[-1] if fitting else 0]
    present = {name for name, pat in CLASSES if any(re.search(pat, t.name) for t in plan)}
    # each class's type under the base preset: the type most of its weights have
    trial = [replace(t) for t in plan]
    apply_recipe(trial, base, n_layers)
    types: dict[str, T] = {}
    for name, pat in CLASSES:
        weight: dict[T, int] = {}
        for t in trial:
            if re.search(pat, t.name) and t.ggml_type in LADDER:
                weight[t.ggml_type] = weight.get(t.ggml_type, 0) + t.numel
        if weight:
            types[name] = max(weight, key=weight.__getitem__)
    moves: list[str] = []

    def size() -> int:
        return _size(plan, _with_overrides(base, types, present), n_layers) + overhead

    while size() > budget:  # down, least sensitive first, one step per class per round
        moved = False
        for name, _ in CLASSES:
            if name in types and LADDER.index(types[name]) > 0:
                types[name] = LADDER[LADDER.index(types[name]) - 1]
                moves.append(f"{name} down to {types[name].name}")
                moved = True
                if size() <= budget:
                    break
        if not moved:
            raise InputError(
                None,
                f"no recipe fits {format_size(budget)}: the smallest achievable file is "
                f"{format_size(size())} ({size():,} bytes)",
            )
    improved = True
    while improved:  # up, most sensitive first, while it still fits
        improved = False
        for name, _ in reversed(CLASSES):
            if name in types and LADDER.index(types[name]) < len(LADDER) - 1:
                old = types[name]
                types[name] = LADDER[LADDER.index(old) + 1]
                if size() <= budget:
                    moves.append(f"{name} up to {types[name].name}")
                    improved = True
                else:
                    types[name] = old
    final = _with_overrides(base, types, present)
    return Choice(final, _size(plan, final, n_layers), [f"start from {base.name}", *moves])
