"""Every bad input: one line naming the file and the problem, a non-zero exit, and nothing at OUT."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from q35local.cli import main


@pytest.fixture
def ckpt(moe_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny MoE checkpoint to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(moe_ckpt, dst)
    return dst


def _run(ckpt: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    rc = main(["quantize", str(ckpt), "-o", str(out), "--quant", "Q8_0", *extra])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.count("\n") == 0, f"not one line: {err!r}"
    assert err.startswith("q35: error: ")
    # nothing that looks like output: no OUT, no mmproj, no temporary
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith((out.stem, f".{out.stem}"))]
    assert leftovers == []
    return err


def _shards(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("model-*.safetensors"))


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite a shard's JSON header in place (same length, padded), leaving the data as it is."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= n
    path.write_bytes(raw[:8] + new + b" " * (n - len(new)) + raw[8 + n :])


def test_truncated_shard(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = _shards(ckpt)[-1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert str(shard) in err and "truncated" in err


def test_header_offsets_that_lie(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = _shards(ckpt)[0]

    def overlap(h: dict) -> None:
        entries = sorted((v["data_offsets"][0], k) for k, v in h.items() if k != "__metadata__")
        _, second = entries[1]
        b, e = h[second]["data_offsets"]
        h[second]["data_offsets"] = [b - 2, e - 2]  # now overlaps the first tensor

    _rewrite_header(shard, overlap)
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert str(shard) in err and "overlap" in err


def test_header_size_mismatch(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = _shards(ckpt)[0]

    def grow(h: dict) -> None:
        name = next(k for k in h if k != "__metadata__")
        h[name]["shape"] = [h[name]["shape"][0] + 1, *h[name]["shape"][1:]]

    _rewrite_header(shard, grow)
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert str(shard) in err and "bytes" in err


def test_shard_missing_from_index(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = _shards(ckpt)[-1]
    shard.unlink()
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert shard.name in err and "missing" in err


def test_unknown_architecture(ckpt: Path, tmp_path: Path, capsys) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert "config.json" in err and "LlamaForCausalLM" in err


def test_shape_disagrees_with_config(ckpt: Path, tmp_path: Path, capsys) -> None:
    target = "model.language_model.layers.3.self_attn.q_proj.weight"
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / index["weight_map"][target]

    def transpose(h: dict) -> None:  # same byte count, so only the config check can catch it
        h[target]["shape"] = list(reversed(h[target]["shape"]))

    _rewrite_header(shard, transpose)
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert str(shard) in err and target in err and "config.json" in err


class _Boom:
    """Unpickling this would create a marker file: the test proves we never unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_checkpoint_refused(ckpt: Path, tmp_path: Path, capsys) -> None:
    for s in _shards(ckpt):
        s.unlink()
    (ckpt / "model.safetensors.index.json").unlink()
    marker = tmp_path / "unpickled"
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert "pytorch_model.bin" in err and "pickle" in err
    assert not marker.exists()


def test_output_folder_missing(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "no" / "such" / "dir" / "out.gguf"
    rc = main(["quantize", str(ckpt), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and str(out) in err and err.count("\n") == 0
    assert not out.parent.exists()


def test_output_unwritable(ckpt: Path, capsys) -> None:
    out = Path("/proc/q35-out.gguf")  # unwritable even for root
    rc = main(["quantize", str(ckpt), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and str(out) in err and "cannot write" in err and err.count("\n") == 0


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000_000, 20_000_000))


def test_disk_full_mid_write(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "q35local.cli", "quantize", str(ckpt), "-o", str(out), "--quant", "F32"],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode != 0
    assert err.count("\n") == 0 and "disk full" in err and str(out) in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_interrupt_leaves_nothing(ckpt: Path, tmp_path: Path) -> None:
    from quantize.convert import ConvertOptions, convert
    from quantize.plan import OutType

    out = tmp_path / "out.gguf"
    seen = []

    def progress(n: int, done: bool, name: str) -> None:
        seen.append(name)
        if len(seen) > 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(ConvertOptions(checkpoint=ckpt, output=out, quant=OutType.F16), progress)
    # nothing under OUT's name; only the hidden partial file and its journal, for --resume
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.gguf.journal", ".out.gguf.partial", "ckpt"]
