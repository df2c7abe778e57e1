"""--dry-run: the per-class table and the exact output size, from headers only, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from q35local.cli import main


@pytest.mark.parametrize("quant", ["Q4_K_XL", "Q8_0"])
def test_dry_run_size_is_exact(small_moe_ckpt: Path, tmp_path: Path, capsys, quant: str) -> None:
    out = tmp_path / "m.gguf"
    assert (
        main(["quantize", str(small_moe_ckpt), "-o", str(out), "--quant", quant, "--dry-run", "--json"]) == 0
    )
    planned = json.loads(capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert {"output_bytes", "bits_per_weight", "classes"} <= set(planned)
    assert all(set(c) == {"class", "type", "tensors", "params", "bytes"} for c in planned["classes"])
    assert sum(c["params"] for c in planned["classes"]) == planned["params"]
    assert main(["quantize", str(small_moe_ckpt), "-o", str(out), "--quant", quant]) == 0
    capsys.readouterr()
    assert out.stat().st_size == planned["output_bytes"]
    assert planned["bits_per_weight"] == pytest.approx(8 * out.stat().st_size / planned["params"])


def test_dry_run_table(small_moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "quantize",
                str(small_moe_ckpt),
                "-o",
                str(tmp_path / "m.gguf"),
                "--quant",
                "Q3_K_XL",
                "--dry-run",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "dry run: nothing written" in text and "ffn_up_exps" in text and "Q3_K" in text
    assert list(tmp_path.iterdir()) == []


def test_stock_mixtures_write_the_mmproj_in_f16(moe_ckpt: Path, tmp_path: Path) -> None:
    from quantize.convert import ConvertOptions, convert

    def mm(quant: str) -> list:
        opts = ConvertOptions(checkpoint=moe_ckpt, output=tmp_path / f"{quant}.gguf", quant=quant)
        r = convert(opts, dry_run=True)
        assert r.mmproj is not None
        return [(t.name, t.ggml_type) for t in r.mmproj.tensors]

    assert mm("Q4_K_M") == mm("F16")


def test_dry_run_json_loads_only_what_it_needs(small_moe_ckpt: Path, tmp_path: Path) -> None:
    """`q35 quantize --dry-run --json` imports neither the other commands nor rich nor llama.cpp's
    bindings: on a 397B checkpoint their imports were a tenth of the whole command."""
    import subprocess
    import sys

    argv = ["quantize", str(small_moe_ckpt), "-o", str(tmp_path / "x.gguf"), "--dry-run", "--json"]
    code = (
        f"import sys; from q35local.cli import main; main({argv!r}); "
        "print(sorted(m for m in ('q35local.commands.fit', 'q35local.planning.planner', 'textual', 'rich', "
        "'llama_cpp') "
        "if m in sys.modules), file=sys.stderr)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["output_bytes"] > 0
    assert r.stderr.strip().splitlines()[-1] == "[]"
