"""--split-max-size writes OUT-0000k-of-0000N.gguf shards that llama.cpp loads as one model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import gguf_for, llama_logits, prompt_ids

from q35local.cli import main
from quantize.gguf_file import read_gguf


def test_split_loads_as_one_model(moe_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.gguf"
    assert (
        main(
            [
                "quantize",
                str(moe_ckpt),
                "-o",
                str(out),
                "--quant",
                "Q8_0",
                "--split-max-size",
                "20M",
                "--no-mmproj",
            ]
        )
        == 0
    )
    shards = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(shards) >= 2 and not out.exists()
    assert shards[0].name == f"split-00001-of-{len(shards):05d}.gguf"
    layouts = [read_gguf(s) for s in shards]
    for i, (path, lay) in enumerate(zip(shards, layouts, strict=True)):
        assert lay.get("split.no") == i and lay.get("split.count") == len(shards)
        data = path.stat().st_size - lay.data_start
        assert data <= 20_000_000 or len(lay.tensors) == 1  # a single tensor larger than the cap is allowed
    single = gguf_for(moe_ckpt, "Q8_0")
    assert sum(len(lay.tensors) for lay in layouts) == len(read_gguf(single).tensors)
    assert layouts[0].get("split.tensors.count") == len(read_gguf(single).tensors)
    ids = prompt_ids()
    np.testing.assert_array_equal(llama_logits(shards[0], ids), llama_logits(single, ids))


def test_bad_split_size(moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert main(["quantize", str(moe_ckpt), "-o", str(tmp_path / "x.gguf"), "--split-max-size", "lots"]) != 0
    assert "split-max-size" in capsys.readouterr().err


def test_a_split_models_projector_is_found_from_any_shard(moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    """quantize writes OUT.mmproj.gguf beside OUT-0000k-of-0000n.gguf; run, chat and fit look for it
    from a shard's name (they used to look for OUT-00001-of-0000n.mmproj.gguf and find nothing)."""
    import json

    from q35local.model.profile import default_mmproj

    out = tmp_path / "sp.gguf"
    assert main(["quantize", str(moe_ckpt), "-o", str(out), "--split-max-size", "20M"]) == 0
    shards = sorted(tmp_path.glob("sp-*-of-*.gguf"))
    mmproj = tmp_path / "sp.mmproj.gguf"
    assert len(shards) >= 2 and mmproj.is_file()
    assert [default_mmproj(s) for s in shards] == [mmproj] * len(shards)
    capsys.readouterr()
    assert main(["fit", str(shards[0]), "--hardware", "cpu-desktop-64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["mmproj_bytes"] == mmproj.stat().st_size
