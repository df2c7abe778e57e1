"""What `q35 fit` (and the planning behind `q35 run`) reads besides the hardware file: the numbers on
the command line, the model's own metadata, the calibration cache and an explicit --mmproj. Each bad
value is one line naming the option, file or field and a non-zero exit, never a traceback, a hang or
a plan made from an impossible number.

Through q35local.cli.main in this process (no llama.cpp load happens on any of these paths)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
from pathlib import Path

import pytest
from conftest import gguf_for, parsed_or_one_line
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_gguf import copy_with

from q35local.base import limits
from q35local.cli import build_parser, main

HW = ["--hardware", "cpu-desktop-64"]


def _one_line(capsys: pytest.CaptureFixture[str], rc: int, want_rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == want_rc, err
    assert err.startswith("q35: error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def tiny(moe_ckpt: Path) -> Path:
    return gguf_for(moe_ckpt, "Q8_0")


# --- numbers on the command line: a range at the parser, named --------------------------------------

BAD_NUMBERS = [
    ("run", ["--ctx", "-5"]),
    ("run", ["--ctx", "0"]),
    ("run", ["--ctx", "2000000"]),
    ("run", ["--threads", "-1"]),
    ("run", ["--threads", "0"]),
    ("run", ["--max-tokens", "0"]),
    ("run", ["-n", "-1"]),
    ("run", ["--seed", "-1"]),
    ("run", ["--seed", str(2**32)]),
    ("run", ["--temperature", "nan"]),
    ("run", ["--temperature", "-0.5"]),
    ("run", ["--temperature", "inf"]),
    ("fit", ["--ctx", "10"]),
    ("fit", ["--ctx", "8k"]),
    ("fit", ["--parallel", "0"]),
    ("fit", ["--parallel", "100000"]),
    ("fit", ["--margin", "nan"]),
    ("fit", ["--margin", "-1"]),
    ("fit", ["--quant", ""]),
    ("inspect", ["-n", "-1"]),
    ("inspect", ["-n", "0"]),
    ("kld", ["--window", "0"]),
    ("kld", ["--window", "1000000"]),
    ("kld", ["--max-tokens", "1"]),
    ("pull", ["--quant", " "]),
]
POSITIONAL = {
    "run": ["m.gguf", "-p", "hi"],
    "fit": ["Qwen3.5-0.8B"],
    "inspect": ["m.gguf"],
    "kld": ["a.gguf", "b.gguf"],
    "pull": ["unsloth/Qwen3.5-0.8B-GGUF"],
}


@pytest.mark.parametrize(("command", "option"), BAD_NUMBERS)
def test_numbers_out_of_range_are_one_usage_line(
    capsys: pytest.CaptureFixture[str], command: str, option: list[str]
) -> None:
    extra = ["--quant", "Q4_K_M"] if command == "pull" and option[0] != "--quant" else []
    rc = main([command, *POSITIONAL[command], *option, *extra])
    name = option[0] if option[0].startswith("--") else "-n"
    _one_line(capsys, rc, 2, f"q35: error: {command}: argument ", name.lstrip("-"))


def test_pull_repo_id_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["pull", "not a repo", "--quant", "Q4_K_M"])
    _one_line(capsys, rc, 2, "expected a Hub repo id OWNER/NAME")


def test_limits_are_what_the_parsers_use() -> None:
    """One place for the ranges: fit, run and inspect refuse just outside them, accept their edges."""
    lo, hi = limits.CTX
    for command, pos in (("fit", POSITIONAL["fit"]), ("run", POSITIONAL["run"])):
        for ok in (lo, hi):
            assert build_parser([command]).parse_args([command, *pos, "--ctx", str(ok)]).ctx == ok
    args = build_parser(["run"]).parse_args(["run", *POSITIONAL["run"], "--seed", str(limits.SEED[1])])
    assert args.seed == 2**32 - 2


# arbitrary text where a number belongs: a value in range, or exit 2 with one line; never a traceback
numbers_as_text = st.one_of(
    st.text(max_size=10),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-0", "0", "1e309", "-1", "256", "1_000", " 7 ", "0x10", "٣"]),
)
RANGES = {
    "--ctx": limits.CTX,
    "--threads": limits.THREADS,
    "--max-tokens": limits.MAX_TOKENS,
    "--seed": limits.SEED,
    "--temperature": limits.TEMPERATURE,
    "--parallel": limits.PARALLEL,
    "--margin": limits.MARGIN_GIB,
}


@given(
    option=st.sampled_from(["--ctx", "--threads", "--max-tokens", "--seed", "--temperature"]),
    text=numbers_as_text,
)
def test_run_numbers_parse_in_range_or_one_line(option: str, text: str) -> None:
    v = parsed_or_one_line(["run", *POSITIONAL["run"], f"{option}={text}"], option)
    if v is not None:
        lo, hi = RANGES[option]
        assert isinstance(v, int | float) and math.isfinite(v) and lo <= v <= hi


@given(option=st.sampled_from(["--ctx", "--parallel", "--margin"]), text=numbers_as_text)
def test_fit_numbers_through_main(option: str, text: str) -> None:
    """The whole command on a described machine: it plans (0), does not fit (3), refuses a context
    the model was not trained for (1) or the number itself (2); always one line when it refuses."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit", "Qwen3.5-0.8B", *HW, "--json", f"{option}={text}"])
    assert rc in (0, 1, 2, 3), err.getvalue()
    if rc in (0, 3):
        assert json.loads(out.getvalue())["fits"] is (rc == 0)
        return
    line = err.getvalue().strip()
    assert "\n" not in line and line.startswith("q35: error: ") and "Traceback" not in line, line
    assert option in line or "trained on" in line, line


# --- the context a model was trained for ---------------------------------------------------------


def test_fit_refuses_a_context_past_the_trained_one(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", str(tiny), *HW, "--ctx", "16384"])
    _one_line(capsys, rc, 1, tiny.name, "--ctx 16,384", "trained on 8,192")


def test_run_refuses_a_context_past_the_trained_one(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(tiny), "-p", "hi", "--ctx", "65536"])  # stopped before anything loads
    _one_line(capsys, rc, 1, tiny.name, "trained on 8,192")


def test_default_context_is_at_most_the_trained_one(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = copy_with(tiny, tmp_path / "short.gguf", values={"qwen35moe.context_length": ("<I", 4096)})
    assert main(["fit", str(short), *HW, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["commands"]["q35"].endswith("--ctx 4096")


# --- the model's metadata: typed and ranged before anything is planned ----------------------------

META_LIES = {
    # 2^31 layers: the planner looped over them (the command never came back)
    "layers": ({"qwen35moe.block_count": 2**31}, "qwen35moe.block_count: must be ≤ 4,096"),
    "no context": ({"qwen35moe.context_length": 0}, "qwen35moe.context_length: must be ≥ 1"),
    # more experts per token than there are: planned as if real (and llama.cpp aborts on it)
    "experts used": (
        {"qwen35moe.expert_used_count": 999},
        "qwen35moe.expert_used_count: must be ≤ 8, got 999",
    ),
    # layers the file does not hold, or tensors of layers the header does not claim: "fits, run it"
    "layers without tensors": ({"qwen35moe.block_count": 40}, "block_count is 40, but layer"),
    "tensors past the layers": ({"qwen35moe.block_count": 2}, "layer 2 is past qwen35moe.block_count (2)"),
    # a full-attention interval of 0 was a ZeroDivisionError (read when no layer list is given)
    "interval": ({"qwen35moe.full_attention_interval": 0}, "full_attention_interval: must be ≥ 1"),
}


@pytest.mark.parametrize("lie", list(META_LIES))
def test_model_metadata_lies(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], lie: str
) -> None:
    values, needle = META_LIES[lie]
    bad = copy_with(tiny, tmp_path / "bad.gguf", values={k: ("<I", v) for k, v in values.items()})
    if lie == "interval":
        _drop_recurrent_layers(bad)
    rc = main(["fit", str(bad), *HW])
    _one_line(capsys, rc, 1, "bad.gguf", needle)


def test_model_key_of_the_wrong_type(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp reads block_count only as a uint32: fit said "fits" for a file llama.cpp refuses."""
    bad = copy_with(tiny, tmp_path / "bad.gguf", types={"qwen35moe.block_count": 5})  # int32, same size
    rc = main(["fit", str(bad), *HW])
    _one_line(capsys, rc, 1, "qwen35moe.block_count: stored as int32, llama.cpp reads it only as uint32")


def _drop_recurrent_layers(path: Path) -> None:
    """Rename the key `...attention.recurrent_layers` (same length) so that the model profile falls
    back to `full_attention_interval`."""
    blob = bytearray(path.read_bytes())
    old = b"qwen35moe.attention.recurrent_layers"
    at = blob.index(old)
    blob[at : at + len(old)] = b"qwen35moe.attention.recurrent_absent"  # same length, a key nobody reads
    path.write_bytes(blob)


def test_truncated_gguf_does_not_fit(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The headline: a GGUF whose tensor data is cut short was "fits, run it"."""
    cut = copy_with(tiny, tmp_path / "cut.gguf", cut=4096)
    rc = main(["fit", str(cut), *HW])
    _one_line(capsys, rc, 1, "cut.gguf: truncated: the data of tensor")


def test_explicit_mmproj_must_exist(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --mmproj was silently left out of the plan."""
    rc = main(["fit", str(tiny), *HW, "--mmproj", str(tmp_path / "typo.mmproj.gguf")])
    _one_line(capsys, rc, 1, "typo.mmproj.gguf: no such GGUF file")
    junk = tmp_path / "junk.mmproj.gguf"
    junk.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0))
    rc = main(["fit", str(tiny), *HW, "--mmproj", str(junk)])
    _one_line(capsys, rc, 1, "junk.mmproj.gguf: corrupt GGUF header")


def test_fifo_as_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    for argv in (["fit", str(fifo), *HW], ["inspect", str(fifo)]):
        _one_line(capsys, main(argv), 1, "pipe.gguf: is not a regular file (a FIFO)")


# --- the calibration cache -------------------------------------------------------------------------

CACHE_LIES = {
    "not JSON": ("{", "cannot parse"),
    "machines a list": ('{"machines": []}', "machines: expected an object"),
    # a factor of the wrong type was a TypeError deep in the estimate; 0 or -1 was a silently wrong speed
    "factor a string": ('{"machines": {"m": {"decode": "fast", "prefill": 1}}}', "machines['m'].decode"),
    "factor zero": ('{"machines": {"m": {"decode": 0, "prefill": 1}}}', "must be > 0, got 0"),
    "factor negative": ('{"machines": {"m": {"decode": 1, "prefill": -2}}}', "must be > 0, got -2"),
    "factor nan": ('{"machines": {"m": {"decode": NaN, "prefill": 1}}}', "finite"),
    "entry a number": ('{"machines": {"m": 3}}', "expected decode and prefill"),
}


@pytest.mark.parametrize("lie", list(CACHE_LIES))
def test_calibration_cache_lies(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lie: str
) -> None:
    text, needle = CACHE_LIES[lie]
    monkeypatch.setenv("Q35_CACHE", str(tmp_path))
    cache = tmp_path / "q35local" / "calibration.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(text)
    rc = main(["fit", str(tiny), "--json"])  # this machine: its calibration is read
    err = _one_line(capsys, rc, 1, "calibration.json", needle)
    assert "q35 fit --calibrate" in err  # how to mend it


def test_calibration_cache_fifo_does_not_block(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    monkeypatch.setenv("Q35_CACHE", str(tmp_path))
    (tmp_path / "q35local").mkdir()
    os.mkfifo(tmp_path / "q35local" / "calibration.json")
    rc = main(["fit", str(tiny), "--json"])
    _one_line(capsys, rc, 1, "calibration.json: is not a regular file")


def test_no_calibration_cache_is_no_calibration(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("Q35_CACHE", str(tmp_path))
    assert main(["fit", str(tiny), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["calibrated"] is False
