"""Property-based: whatever config.json, safetensors header or quantize number a user hands us, the
answer is a result or one InputError line naming the file and the field, never another exception.

Each property is a bounded, derandomized hypothesis run (tests/conftest.py's profile); the plain
regression cases live in tests/test_bad_input.py."""

from __future__ import annotations

import itertools
import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
from conftest import parsed_or_one_line
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from q35local.base.errors import InputError
from q35local.cli import main
from quantize.config import MAX_DIM, MAX_EXPERTS, MAX_LAYERS, Qwen35Config, load_config
from quantize.qwen35 import config_json
from quantize.safetensors_io import DTYPES, read_header
from quantize.synth import spec_for

BASE = config_json(spec_for("tiny-moe"))
TEXT_KEYS = sorted(BASE["text_config"])
VISION_KEYS = sorted(BASE["vision_config"])
TOP_KEYS = sorted(k for k in BASE if k not in ("text_config", "vision_config"))

# JSON values of every kind, weighted toward the numbers a config holds and their edges
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, 1, -1, 2, 3, 4, 7, 64, 2**31, 2**32 + 1, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def _mutations(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    """Up to three keys of a section replaced by any value, or deleted (None stands for deletion)."""
    return st.dictionaries(st.sampled_from(keys), st.one_of(values, st.just(_DELETE)), max_size=3)


_DELETE = object()


def _apply(section: dict, edits: dict[str, object]) -> None:
    for k, v in edits.items():
        if v is _DELETE:
            section.pop(k, None)
        else:
            section[k] = v


def _one_line_naming(e: InputError, name: str) -> None:
    text = str(e)
    assert "\n" not in text and name in text, text


def _json(data: object) -> str:
    return json.dumps(data, allow_nan=True)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(text=_mutations(TEXT_KEYS), vision=_mutations(VISION_KEYS), top=_mutations(TOP_KEYS))
def test_config_json_mutations(text: dict, vision: dict, top: dict) -> None:
    cfg = json.loads(json.dumps(BASE))
    _apply(cfg["text_config"], text)
    _apply(cfg["vision_config"], vision)
    _apply(cfg, top)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(_json(cfg))
        try:
            c = load_config(Path(d))
        except InputError as e:
            _one_line_naming(e, "config.json")
            event("refused")
            return
    event("accepted")
    _sane(c)


@given(st.one_of(values, st.dictionaries(st.text(max_size=12), values, max_size=6)))
def test_config_json_of_any_shape(data: object) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(_json(data))
        with pytest.raises(InputError) as e:  # nothing random is a Qwen 3.5 architecture
            load_config(Path(d))
        _one_line_naming(e.value, "config.json")


def _sane(c: Qwen35Config) -> None:
    """What every accepted config promises the planner: sizes it can allocate for and divide by."""
    assert 1 <= c.num_hidden_layers <= MAX_LAYERS and len(c.layer_types) == c.num_hidden_layers
    assert (
        1 <= c.num_key_value_heads <= c.num_attention_heads
        and c.num_attention_heads % c.num_key_value_heads == 0
    )
    for v in (c.hidden_size, c.head_dim, c.vocab_size, c.linear_num_key_heads, c.linear_key_head_dim):
        assert 1 <= v <= max(MAX_DIM, 1 << 24)
    assert c.linear_num_value_heads % c.linear_num_key_heads == 0
    assert math.isfinite(c.rms_norm_eps) and 0 < c.rms_norm_eps <= 1
    assert math.isfinite(c.rope_theta) and c.rope_theta > 0
    if c.moe:
        assert 1 <= c.num_experts_per_tok <= c.num_experts <= MAX_EXPERTS


# --- safetensors headers ---------------------------------------------------------------------

dtypes = st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=6), st.integers(), st.none())
shapes = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=70), max_size=4),
    st.lists(st.sampled_from([0, 1, 2**31, 2**62, 2**64]), max_size=3),
    values,
)
offsets = st.one_of(
    st.tuples(st.integers(-8, 300), st.integers(-8, 300)).map(list),
    st.lists(st.integers(min_value=0, max_value=2**64), max_size=3),
    values,
)
entry = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets}) | values
headers = st.dictionaries(st.text(min_size=1, max_size=10), entry, max_size=5)


@given(header=headers, data_len=st.integers(0, 400), slack=st.integers(-16, 16))
def test_safetensors_header_that_lies(header: dict, data_len: int, slack: int) -> None:
    raw = _json(header).encode()
    n = max(0, len(raw) + slack)  # the length prefix may lie too
    blob = struct.pack("<Q", n) + raw + b"\0" * data_len
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(blob)
        try:
            entries = read_header(path)
        except InputError as e:
            _one_line_naming(e, str(path))
            event("refused")
            return
    event(f"accepted ({len(entries)} tensors)")
    # accepted: every tensor lies inside the file, none overlaps another, sizes agree with shapes
    spans = sorted((e.begin, e.end) for e in entries.values())
    for (_, e0), (b1, _) in itertools.pairwise(spans):
        assert e0 <= b1
    for e in entries.values():
        assert 8 + n <= e.begin <= e.end <= len(blob)
        assert e.end - e.begin == e.numel * DTYPES[e.dtype][1]


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict, int]:
    """A consistent header (tensors back to back) with at most one lie: a moved offset, another shape
    or dtype, or data cut short. Returns the header and the data length."""
    header: dict = {}
    end = 0
    for i in range(draw(st.integers(1, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
        n = math.prod(shape) * DTYPES[dtype][1]
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [end, end + n]}
        end += n
    data_len = end
    lie = draw(st.sampled_from(["none", "offset", "shape", "dtype", "short", "long"]))
    victim = header[draw(st.sampled_from(sorted(header)))]
    if lie == "offset":
        k = draw(st.integers(0, 1))
        victim["data_offsets"][k] += draw(st.integers(-3, 3))
    elif lie == "shape":
        victim["shape"] = draw(st.lists(st.integers(0, 6), max_size=3))
    elif lie == "dtype":
        victim["dtype"] = draw(st.sampled_from(sorted(DTYPES)))
    elif lie == "short":
        data_len -= draw(st.integers(1, 4))
    elif lie == "long":
        data_len += draw(st.integers(1, 4))
    return header, max(0, data_len)


@given(near_valid())
def test_safetensors_header_with_one_lie(case: tuple[dict, int]) -> None:
    header, data_len = case
    test_safetensors_header_that_lies.hypothesis.inner_test(header=header, data_len=data_len, slack=0)


@given(st.binary(max_size=64))
def test_safetensors_random_bytes(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(blob)
        try:
            read_header(path)
        except InputError as e:
            _one_line_naming(e, str(path))


# --- quantize's numbers -----------------------------------------------------------------------

NUMBER_OPTIONS = ["--threads", "--target-bpw", "--target-size", "--split-max-size"]
typed = st.one_of(
    st.text(max_size=10),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-0", "0", "1e309", "5G", "0.5M", "-1", "nanG", "1e400T", "  7 "]),
)


@given(option=st.sampled_from(NUMBER_OPTIONS), text=typed)
def test_quantize_numbers_parse_in_range_or_one_line(option: str, text: str) -> None:
    v = parsed_or_one_line(["quantize", "CKPT", "-o", "OUT.gguf", f"{option}={text}"], option)
    if v is None:
        return
    assert isinstance(v, int | float)
    if option == "--threads":
        assert 1 <= v <= 4096
    elif option == "--target-bpw":
        assert math.isfinite(v) and 0 < v <= 32
    elif option == "--split-max-size":
        assert v >= 1_000_000
    else:
        assert v >= 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "-1"],
        ["--threads", "0"],
        ["--target-bpw", "nan"],
        ["--target-bpw", "0"],
        ["--target-bpw", "inf"],
        ["--split-max-size", "0"],
        ["--target-size", "infG"],
        ["--target-size", "0"],
    ],
)
def test_quantize_numbers_through_main(moe_ckpt: Path, tmp_path: Path, capsys, argv: list[str]) -> None:
    rc = main(["quantize", str(moe_ckpt), "-o", str(tmp_path / "o.gguf"), "--dry-run", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and argv[0] in err, err
    assert list(tmp_path.iterdir()) == []
