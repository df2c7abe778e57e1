"""Every bad input: one line naming the file and the problem, a non-zero exit, and nothing at OUT."""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
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
    # nothing under OUT's name (and no lock left); only this run's hidden partial file and its
    # journal, for --resume
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 3 and left[2] == "ckpt", left
    assert re.fullmatch(r"\.out\.gguf\.(\d+-[0-9a-f]{6})\.journal", left[0]), left
    assert left[1] == left[0].removesuffix(".journal") + ".partial"


# --- outputs: never an input, never shared, published together --------------------------------


def _digest(folder: Path) -> dict[str, bytes]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).digest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("where", ["shard", "inside", "link", "mmproj"])
def test_output_onto_an_input_is_refused(ckpt: Path, tmp_path: Path, capsys, where: str) -> None:
    shard = _shards(ckpt)[-1]
    before = _digest(ckpt)
    extra: list[str] = []
    if where == "shard":
        out = shard
    elif where == "inside":
        out = ckpt / "model.gguf"
    elif where == "link":  # another name for the shard: a symlink outside the folder
        out = tmp_path / "elsewhere.gguf"
        out.symlink_to(shard)
    else:
        out = tmp_path / "out.gguf"
        extra = ["--mmproj", str(shard)]
    rc = main(["quantize", str(ckpt), "-o", str(out), "--quant", "Q8_0", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and err.startswith("q35: error: "), err
    assert ("is an input" in err) if where != "inside" else ("inside the checkpoint folder" in err), err
    assert _digest(ckpt) == before  # the checkpoint is untouched
    assert not (tmp_path / "out.gguf").exists()


def test_hard_link_to_an_input_is_refused(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = _shards(ckpt)[0]
    out = tmp_path / "hard.gguf"
    os.link(shard, out)
    before = shard.read_bytes()
    assert main(["quantize", str(ckpt), "-o", str(out)]) == 1
    assert "is an input" in capsys.readouterr().err
    assert shard.read_bytes() == before


def test_second_run_to_the_same_output_is_told_who_holds_it(
    small_moe_ckpt: Path, tmp_path: Path, capsys
) -> None:
    from conftest import gguf_for

    out = tmp_path / "m.gguf"
    cmd = [sys.executable, "-m", "q35local.cli", "quantize", str(small_moe_ckpt), "-o", str(out)]
    first = subprocess.Popen(
        [*cmd, "--quant", "Q3_K_XL", "--threads", "1"], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline and first.poll() is None and not list(tmp_path.glob(".m.gguf.*.journal"))
        ):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        rc = main(["quantize", str(small_moe_ckpt), "-o", str(out), "--quant", "Q3_K_XL"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.count("\n") == 0, err
        assert f"being written by another q35 run (pid {first.pid}" in err, err
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    # the first run was not disturbed: its file is the reference conversion, and nothing is left over
    assert out.read_bytes() == gguf_for(small_moe_ckpt, "Q3_K_XL").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_failure_in_the_mmproj_leaves_no_model(ckpt: Path, tmp_path: Path) -> None:
    """The model is complete when the projector fails: neither may appear."""
    from quantize.convert import ConvertOptions, convert

    out = tmp_path / "out.gguf"

    def progress(n: int, done: bool, name: str) -> None:
        if name.startswith("v."):  # the projector's tensors come after every model tensor
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        convert(ConvertOptions(checkpoint=ckpt, output=out, quant="Q8_0"), progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- config.json: ranges and types, named --------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"num_hidden_layers": 1_000_000_000}, "num_hidden_layers"),  # no layer_types: a list of 1e9
        ({"num_attention_heads": 0, "head_dim": 16}, "num_attention_heads"),
        ({"full_attention_interval": 0}, "full_attention_interval"),
        ({"hidden_size": "64"}, "hidden_size"),
        ({"rms_norm_eps": -1.0}, "rms_norm_eps"),
        ({"num_experts_per_tok": 1000}, "num_experts_per_tok"),
        ({"vocab_size": True}, "vocab_size"),
    ],
)
def test_config_values_out_of_range(ckpt: Path, tmp_path: Path, capsys, edit: dict, field: str) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"].pop("layer_types", None)
    cfg["text_config"].update(edit)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    for extra in (["--dry-run"], []):
        err = _run(ckpt, tmp_path / "out.gguf", capsys, *extra)
        assert "config.json" in err and f"text_config.{field}" in err, err
    rc = main(["fit", str(ckpt)])  # the planner reads the same config
    err = capsys.readouterr().err.strip()
    assert rc == 1 and f"text_config.{field}" in err and err.count("\n") == 0, err


def test_config_nested_too_deeply(ckpt: Path, tmp_path: Path, capsys) -> None:
    (ckpt / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert "config.json" in err and "nested too deeply" in err


@pytest.mark.parametrize("victim", ["shard", "config.json", "index"])
def test_fifo_where_a_file_should_be(ckpt: Path, tmp_path: Path, capsys, victim: str) -> None:
    path = {
        "shard": _shards(ckpt)[0],
        "config.json": ckpt / "config.json",
        "index": ckpt / "model.safetensors.index.json",
    }[victim]
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block until a writer comes: never
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert str(path) in err and "not a regular file (a FIFO)" in err, err


# --- weights: NaN and Inf are a damaged checkpoint ---------------------------------------------


def _poison(ckpt: Path, value: float) -> str:
    """Put `value` into the first element of an F32/BF16 matrix of the last shard; returns its name."""
    shard = _shards(ckpt)[-1]
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name, info = next(
        (k, v)
        for k, v in sorted(header.items())
        if k.endswith("proj.weight") and v["dtype"] in ("BF16", "F32")
    )
    at = 8 + n + info["data_offsets"][0]
    if info["dtype"] == "F32":
        raw[at : at + 4] = struct.pack("<f", value)
    else:  # BF16: the high half of the float32
        raw[at : at + 2] = struct.pack("<f", value)[2:]
    shard.write_bytes(bytes(raw))
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weight_is_refused(ckpt: Path, tmp_path: Path, capsys, value: float) -> None:
    name = _poison(ckpt, value)
    err = _run(ckpt, tmp_path / "out.gguf", capsys, "--quant", "Q4_K_M")
    assert name in err and "NaN/Inf" in err and "--allow-nonfinite" in err, err


def test_nonfinite_weight_allowed_is_counted(ckpt: Path, tmp_path: Path, capsys) -> None:
    name = _poison(ckpt, float("nan"))
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(ckpt), "-o", str(out), "--quant", "F32", "--allow-nonfinite", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    warn = next(n for n in notes if n.startswith("warning:"))
    assert "1 NaN/Inf" in warn and "(--allow-nonfinite)" in warn, warn
    assert out.exists() and name


# --- the other files of a checkpoint ---------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "edit", "says"),
    [
        ("generation_config.json", {"temperature": "hot"}, "temperature: expected a number"),
        ("generation_config.json", {"top_k": 1e30}, "top_k: must be ≤"),
        ("generation_config.json", {"top_p": -0.5}, "top_p: must be ≥ 0"),
        ("tokenizer.json", {"added_tokens": [{"id": "7", "content": "<x>"}]}, "added_tokens[0].id"),
        ("tokenizer.json", {"added_tokens": [{"id": 10**9, "content": "<x>"}]}, "does not fit vocab_size"),
        ("tokenizer.json", {"model": {"type": "BPE", "vocab": {"a": -1}}}, "model.vocab['a']"),
        ("tokenizer.json", {"model": {"type": "BPE", "vocab": {}, "merges": [7]}}, "model.merges"),
    ],
)
def test_checkpoint_json_fields(ckpt: Path, tmp_path: Path, capsys, file: str, edit: dict, says: str) -> None:
    path = ckpt / file
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(edit)
    path.write_text(json.dumps(data))
    err = _run(ckpt, tmp_path / "out.gguf", capsys)
    assert file in err and says in err, err


def test_recipe_fifo_and_bad_version(ckpt: Path, tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)
    err = _run(ckpt, tmp_path / "out.gguf", capsys, "--recipe", str(fifo))
    assert "recipe.toml" in err and "FIFO" in err
    fifo.unlink()
    fifo.write_text('version = "two"\n[[rule]]\nmatch = ".*"\ntype = "Q8_0"\n')
    err = _run(ckpt, tmp_path / "out.gguf", capsys, "--recipe", str(fifo))
    assert "version: expected a number" in err, err


def test_make_tiny_never_replaces_a_real_checkpoint(ckpt: Path, tmp_path: Path, capsys) -> None:
    (ckpt / "q35-synth.json").unlink()  # now it could be anybody's checkpoint
    before = _digest(ckpt)
    assert main(["make-tiny", str(ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert str(ckpt) in err and "not a generated checkpoint" in err and err.count("\n") == 0
    assert _digest(ckpt) == before
    # a file, too, stays; a generated folder is replaced, and no temporary is left beside it
    (tmp_path / "file").write_text("mine")
    assert main(["make-tiny", str(tmp_path / "file")]) == 1
    assert (tmp_path / "file").read_text() == "mine"
    capsys.readouterr()
    assert main(["make-tiny", str(tmp_path / "gen"), "--dense", "--no-vision"]) == 0
    assert main(["make-tiny", str(tmp_path / "gen"), "--dense", "--no-vision"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "file", "gen"]


def test_reader_gone_is_no_traceback(moe_ckpt: Path, tmp_path: Path) -> None:
    """`q35 quantize --dry-run --json | head -0`: the pipe's reader has left before the output."""
    r, w = os.pipe()
    os.close(r)
    cmd = [sys.executable, "-m", "q35local.cli", "quantize", str(moe_ckpt), "-o", str(tmp_path / "o.gguf")]
    proc = subprocess.run(
        [*cmd, "--dry-run", "--json"], stdout=w, stderr=subprocess.PIPE, text=True, timeout=120
    )
    os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
