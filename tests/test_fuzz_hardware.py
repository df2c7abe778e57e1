"""Property-based: whatever hardware file (TOML or JSON, `q35 fit --hardware FILE`, Q35_HARDWARE) a user
hands us, the answer is a Hardware the planner can divide by, or one InputError line naming the file,
never another exception and never a machine with negative or zero sizes planned as if real.

Each property is a bounded, derandomized hypothesis run (tests/conftest.py's profile); the plain
regression cases are in tests/test_probe.py (test_load_bad_files)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from q35local.base.errors import InputError
from q35local.machine.hardware import FILE_KEYS, GPU_KEYS, load_hardware_file
from q35local.machine.spec import Hardware
from q35local.model.official import official_profile
from q35local.planning.planner import Settings, plan
from q35local.planning.speed import estimate

_DELETE = object()

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 8, 24, 64, 2**31, 10**6, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1e-300, 1e300, 25.0]),
)
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=10), st.sampled_from(["cuda", "metal", "rocm"]))
values = st.recursive(
    scalars | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

GOOD_GPU = {"name": "NVIDIA GeForce RTX 4090", "kind": "cuda", "memory_gb": 24, "bandwidth_gbs": 1008}
GOOD = {"name": "box", "cpu": "AMD Ryzen 9 7950X", "cores": 16, "ram_gb": 64, "ram_bandwidth_gbs": 96}


def _edits(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    """Up to three known keys replaced by any value or deleted, and maybe one unknown key added."""
    known = st.dictionaries(st.sampled_from(keys), values | st.just(_DELETE), max_size=3)
    extra = st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=1)
    return st.tuples(known, st.one_of(st.just({}), extra)).map(lambda t: {**t[0], **t[1]})


def _apply(table: dict, edits: dict[str, object]) -> dict:
    out = dict(table)
    for k, v in edits.items():
        if v is _DELETE:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _toml_value(v: object) -> str | None:
    """A TOML rendering of a JSON-like value (None has none: the key is left out)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, list):
        items = [x for x in (_toml_value(i) for i in v) if x is not None]
        return "[" + ", ".join(items) + "]"
    assert isinstance(v, dict)
    pairs = [(json.dumps(str(k)), _toml_value(x)) for k, x in v.items()]
    return "{" + ", ".join(f"{k} = {x}" for k, x in pairs if x is not None) + "}"


def _toml(data: dict) -> str:
    lines = [f"{json.dumps(k)} = {t}" for k, v in data.items() if (t := _toml_value(v)) is not None]
    return "\n".join(lines) + "\n"


def _sane(hw: Hardware) -> None:
    """What every accepted machine promises the planner: positive, finite sizes and speeds."""
    assert hw.ram_total >= 1 and 0 <= hw.usable_ram() <= hw.ram_total
    assert hw.ram_available is None or 1 <= hw.ram_available <= hw.ram_total
    assert (
        hw.cpu.cores is not None and hw.cpu.cores >= 1 and hw.cpu.threads is not None and hw.cpu.threads >= 1
    )
    for bw in (hw.ram_bandwidth_gbs, hw.pcie_gbs, *(d.bandwidth_gbs for d in hw.devices)):
        assert bw is None or (math.isfinite(bw) and bw > 0)
    assert len({d.kind for d in hw.devices}) <= 1
    for d in hw.devices:
        assert d.kind in ("cuda", "metal") and d.total_bytes >= 1 and d.name.isprintable()
        assert d.free_bytes is None or 1 <= d.free_bytes <= d.total_bytes
        assert 0 < d.usable_bytes <= d.total_bytes
    assert hw.name.isprintable() and hw.cpu.model.isprintable()


MODEL = None


def _plans(hw: Hardware) -> None:
    """The planner and the speed estimate take any accepted machine without dividing by zero."""
    global MODEL
    MODEL = MODEL or official_profile("Qwen3.5-35B-A3B", "Q4_K_XL")
    p = plan(MODEL, hw, Settings(n_ctx=4096))
    e = estimate(MODEL, hw, p)
    assert e.decode_tps >= 0 and e.prefill_tps >= 0 and math.isfinite(e.decode_tps)


def _check(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"hw{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            hw = load_hardware_file(path)
        except InputError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(f"{path}: "), msg
            event("refused")
            return
    event("accepted")
    _sane(hw)
    _plans(hw)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    top=_edits(list(FILE_KEYS)),
    gpus=st.lists(_edits(list(GPU_KEYS)), max_size=3),
    fmt=st.sampled_from([".toml", ".json"]),
)
def test_hardware_file_mutations(top: dict, gpus: list[dict], fmt: str) -> None:
    data = _apply(GOOD, top)
    if gpus and "gpu" not in top:
        data["gpu"] = [_apply(GOOD_GPU, g) for g in gpus]
    text = json.dumps(data, allow_nan=True) if fmt == ".json" else _toml(data)
    _check(text, fmt)


@given(data=st.one_of(values, st.dictionaries(st.sampled_from([*FILE_KEYS, "x"]), values, max_size=6)))
def test_hardware_file_of_any_shape(data: object) -> None:
    _check(json.dumps(data, allow_nan=True), ".json")
    if isinstance(data, dict):
        _check(_toml(data), ".toml")


@given(text=st.text(max_size=120))
def test_hardware_file_of_any_text(text: str) -> None:
    _check(text, ".toml")
    _check(text, ".json")


@pytest.mark.parametrize("fmt", [".toml", ".json"])
def test_the_good_file_is_accepted(fmt: str) -> None:
    """The base of the mutations is itself valid (the properties above do not only see refusals)."""
    data = {**GOOD, "gpu": [GOOD_GPU]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"hw{fmt}"
        path.write_text(json.dumps(data) if fmt == ".json" else _toml(data))
        hw = load_hardware_file(path)
    assert hw.ram_total == 64 << 30 and hw.devices[0].total_bytes == 24 << 30 and hw.cpu.cores == 16
    _sane(hw)
    _plans(hw)
