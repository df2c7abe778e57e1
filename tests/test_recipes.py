"""Recipes: presets load and type tensors as their rules say; bad recipes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gguf_for
from gguf import GGMLQuantizationType as T

from q35local.cli import main
from quantize.gguf_file import read_gguf
from quantize.recipes import load_preset, preset_names, shape_fallback

GOOD = """
name = "mine"
version = 2
[[rule]]
match = 'ffn_.*_exps'
type = "Q3_K"
why = "experts low"
[[rule]]
match = '.'
type = "Q8_0"
"""


def test_presets_are_versioned_and_explained() -> None:
    assert {"Q2_K_XL", "Q3_K_XL", "Q4_K_XL", "Q5_K_XL", "Q6_K_XL"} <= set(preset_names())
    for name in preset_names():
        r = load_preset(name)
        assert r.version >= 1 and r.description
        assert all(rule.why for rule in r.rules)


def test_preset_types_on_a_real_file(small_moe_ckpt: Path) -> None:
    types = {n: T(ty) for n, _s, ty, _o in read_gguf(gguf_for(small_moe_ckpt, "Q4_K_XL")).tensors}
    assert types["blk.1.ffn_gate_exps.weight"] == T.Q4_K
    assert types["blk.1.ffn_down_exps.weight"] == T.Q5_K
    assert types["blk.0.ssm_alpha.weight"] == T.F32
    assert types["blk.0.attn_qkv.weight"] == T.Q8_0
    assert types["blk.3.attn_q.weight"] == T.Q8_0
    assert types["blk.1.ffn_up_shexp.weight"] == T.Q8_0
    assert types["blk.1.ffn_gate_inp.weight"] == T.F32
    assert types["output.weight"] == T.Q6_K
    assert types["token_embd.weight"] == T.Q4_K
    edge = {n: T(ty) for n, _s, ty, _o in read_gguf(gguf_for(small_moe_ckpt, "Q6_K_XL")).tensors}
    assert edge["blk.0.ffn_down_exps.weight"] == T.Q8_0  # first and last layer of the main stack one step up
    assert edge["blk.3.ffn_down_exps.weight"] == T.Q8_0
    assert edge["blk.1.ffn_down_exps.weight"] == T.Q6_K
    assert edge["blk.4.ffn_down_exps.weight"] == T.Q6_K  # the MTP block is not the last layer


def test_user_recipe(small_moe_ckpt: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text(GOOD)
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(small_moe_ckpt), "-o", str(out), "--recipe", str(recipe)]) == 0
    types = {n: T(ty) for n, _s, ty, _o in read_gguf(out).tensors}
    assert types["blk.2.ffn_up_exps.weight"] == T.Q3_K
    assert types["blk.2.ssm_out.weight"] == T.Q8_0
    assert types["blk.2.attn_norm.weight"] == T.F32  # never quantized, whatever the rules say


@pytest.mark.parametrize(
    "text,problem",
    [
        (GOOD.replace('"Q3_K"', '"Q3_KX"'), "unknown ggml type"),
        (GOOD.replace("'ffn_.*_exps'", "'no_such_tensor'"), "matches no tensor"),
        (GOOD.replace("match = '.'", "match = 'attn'"), "no rule matches tensor"),
        (GOOD.replace("'ffn_.*_exps'", "'ffn_(('"), "bad regex"),
        (GOOD.replace('why = "experts low"', 'whyy = "typo"'), "unknown keys"),
        (GOOD.replace('why = "experts low"', 'models = "sparse"'), "'models' must be"),
        ("name = 'x'", "at least one [[rule]]"),
        ("[[rule]\nmatch=", "not valid TOML"),
    ],
)
def test_bad_recipes(small_moe_ckpt: Path, tmp_path: Path, capsys, text: str, problem: str) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(small_moe_ckpt), "-o", str(out), "--recipe", str(recipe)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(recipe) in err and problem in err, err
    assert not out.exists()


def test_shape_fallbacks_follow_llama_cpp() -> None:
    assert shape_fallback(T.Q4_K, 256) == T.Q4_K
    assert shape_fallback(T.Q4_K, 64) == T.Q5_0
    assert shape_fallback(T.Q5_K, 96) == T.Q5_1
    assert shape_fallback(T.Q6_K, 64) == T.Q8_0
    assert shape_fallback(T.Q6_K, 48) == T.F16


def test_dense_models_get_their_own_rules(tmp_path: Path, capsys) -> None:
    """On a dense model the XL presets' attention and DeltaNet input projections sit one step lower
    (they are ~19% of a 27B's weights); attn_output and ssm_out keep the MoE presets' type."""
    import json

    from quantize.synth import spec_for, write_checkpoint

    ckpt = write_checkpoint(
        tmp_path / "dense", spec_for("small-moe", moe=False, intermediate_size=512, vision=None)
    )
    assert (
        main(
            [
                "quantize",
                str(ckpt),
                "-o",
                str(tmp_path / "d.gguf"),
                "--quant",
                "Q4_K_XL",
                "--dry-run",
                "--json",
            ]
        )
        == 0
    )
    types = {c["class"]: c["type"] for c in json.loads(capsys.readouterr().out)["classes"]}
    assert types["attn_qkv"] == types["attn_gate"] == types["attn_q"] == "Q6_K"
    assert types["attn_output"] == types["ssm_out"] == "Q8_0"
    assert (types["ffn_gate"], types["ffn_up"], types["ffn_down"]) == ("Q4_K", "Q4_K", "Q5_K")
