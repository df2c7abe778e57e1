"""--target-size / --target-bpw pick the best recipe under a budget and say what they chose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from q35local.base.units import format_size, parse_size
from q35local.cli import main


def _dry(ckpt: Path, tmp_path: Path, capsys, *args: str) -> dict:
    assert main(["quantize", str(ckpt), "-o", str(tmp_path / "m.gguf"), "--dry-run", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_target_size_fits_and_uses_the_budget(small_moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    sizes = {
        q: _dry(small_moe_ckpt, tmp_path, capsys, "--quant", q)["output_bytes"]
        for q in ("Q3_K_XL", "Q4_K_XL")
    }
    budget = (sizes["Q3_K_XL"] + sizes["Q4_K_XL"]) // 2
    got = _dry(small_moe_ckpt, tmp_path, capsys, "--target-size", str(budget))
    assert sizes["Q3_K_XL"] < got["output_bytes"] <= budget  # better than the preset below, within budget
    note = next(n for n in got["notes"] if n.startswith("target"))
    assert "start from Q3_K_XL" in note
    out = tmp_path / "real.gguf"
    assert main(["quantize", str(small_moe_ckpt), "-o", str(out), "--target-size", str(budget)]) == 0
    capsys.readouterr()
    assert out.stat().st_size == got["output_bytes"]


def test_target_bpw(small_moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    got = _dry(small_moe_ckpt, tmp_path, capsys, "--target-bpw", "5.0")
    assert 4.5 < got["bits_per_weight"] <= 5.0


def test_impossible_target_names_the_smallest_size(small_moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["quantize", str(small_moe_ckpt), "-o", str(tmp_path / "m.gguf"), "--target-size", "10M"]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert "smallest achievable file is" in err and err.count("\n") == 0
    # sizes read in the unit that suits them, not "0.01 GB"
    assert "no recipe fits 10 MB" in err
    assert re.search(r"smallest achievable file is [1-9][0-9.]* MB \([0-9,]+ bytes\)", err), err


def test_sizes_read_and_print_in_decimal_units() -> None:
    assert parse_size("240G") == 240_000_000_000 and parse_size("1.5T") == 1_500_000_000_000
    assert parse_size("500MB") == 500_000_000 and parse_size("123") == 123
    with pytest.raises(ValueError, match="cannot read size 'lots'"):
        parse_size("lots")
    assert format_size(247_700_000_000) == "248 GB"
    assert format_size(29_114_080) == "29.1 MB"
    assert format_size(1_000_000) == "1 MB"
    assert format_size(512) == "512 B"
    assert format_size(999_999) == "1 MB" and format_size(999_600_000_000) == "1 TB"  # rounded up a unit
    assert format_size(999_499) == "999 KB" and format_size(1_499_999) == "1.5 MB"


@pytest.mark.parametrize("extra", [["--quant", "Q4_K_XL"]])
def test_target_excludes_quant(small_moe_ckpt: Path, tmp_path: Path, capsys, extra: list[str]) -> None:
    assert (
        main(
            ["quantize", str(small_moe_ckpt), "-o", str(tmp_path / "m.gguf"), "--target-size", "90M", *extra]
        )
        == 1
    )
    assert "drop --quant" in capsys.readouterr().err
