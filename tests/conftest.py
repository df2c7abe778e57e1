"""Shared fixtures: generated checkpoints and their GGUFs, built once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from q35local.base.units import GB, format_size
from quantize.convert import ConvertOptions, convert
from quantize.synth import spec_for, write_checkpoint

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property-based tests: a bounded, reproducible run in `make test` (the same examples every run, no
# example database left in the tree, no per-example deadline on this shared, noisy machine).
# HYPOTHESIS_PROFILE=deep explores further by hand.
settings.register_profile("q35", max_examples=60, deadline=None, database=None, derandomize=True)
settings.register_profile("deep", max_examples=2000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "q35"))

# `make test-fast`, the inner loop's tier (well under a minute; `make test` runs everything): modules of
# unit-sized tests (pure functions, parsers and their fuzzing, the screens with a scripted engine,
# SQLite, tiny GGUFs) minus the single tests that wait out a timeout. A module not listed is in the full
# suite only, so a new, slow module never lands in the fast tier by default.
FAST_MODULES = {
    "test_base", "test_chat_session", "test_fuzz_gguf", "test_fuzz_hardware", "test_images", "test_layers",
    "test_mmproj", "test_planning_inputs", "test_probe", "test_protocol", "test_safetensors_header",
    "test_server_reply", "test_split", "test_store", "test_streaming", "test_synth", "test_target",
    "test_template", "test_thinking", "test_tokenizer", "test_tools", "test_tui_keys", "test_tui_snapshots",
    "test_units",
}  # fmt: skip
SLOW_TESTS = {
    "test_probe_fake_nvidia_smi_hangs",  # waits out the probe's timeout
    "test_streaming_phase_allocates_about_one_chunk",  # converts a model under tracemalloc
    "test_target_size_fits_and_uses_the_budget",  # quantizes at several sizes
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = {p.stem for p in Path(__file__).parent.glob("test_*.py")}
    assert here >= FAST_MODULES, f"FAST_MODULES names no such file: {sorted(FAST_MODULES - here)}"
    for item in items:
        module = Path(str(item.fspath)).stem
        if module not in FAST_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


# A chat-formatted prompt with special tokens, multilingual text and code: 16+ tokens.
PROMPT = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
    "What is 2+2? 日本語のテキスト, emoji 🙂 and code: def f(x): return x*2<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n"
)


# A whole run peaks at about 4.3 GB of generated files under pytest's temp dir (measured by sampling
# `du` through `make test`); passed tests' files are removed as they go (pyproject's retention policy).
NEEDS_FREE = 6 * GB


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with the reason, rather than fail dozens of tests half-way with ENOSPC."""
    root = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    free = shutil.disk_usage(root).free
    if free < NEEDS_FREE:
        pytest.exit(
            f"{root}: {format_size(free)} free; the tests need about {format_size(NEEDS_FREE)} "
            "(set TMPDIR to a roomier disk)",
            returncode=2,
        )


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Conversations and llama.cpp's log go to a temp dir, not the user's (the commands the tests
    run as subprocesses inherit it)."""
    os.environ.setdefault("Q35_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("q35")


def _ckpt(work: Path, name: str, preset: str, **kw: object) -> Path:
    path = work / name
    if not (path / "config.json").exists():
        write_checkpoint(path, spec_for(preset, **kw))
    return path


@pytest.fixture(scope="session")
def moe_ckpt(work: Path) -> Path:
    return _ckpt(work, "tiny-moe", "tiny-moe")


@pytest.fixture(scope="session")
def dense_ckpt(work: Path) -> Path:
    return _ckpt(work, "tiny-dense", "tiny-dense")


@pytest.fixture(scope="session")
def small_moe_ckpt(work: Path) -> Path:
    """hidden 256: rows of whole K-quant blocks, for the quantization tests."""
    return _ckpt(work, "small-moe", "small-moe", vision=None)


@pytest.fixture(scope="session")
def fp8_ckpt(work: Path) -> Path:
    return _ckpt(work, "tiny-moe-fp8", "tiny-moe", dtype="FP8")


_built: dict[tuple[Path, str, bool], Path] = {}


def gguf_for(ckpt: Path, quant: str, mtp: bool = True) -> Path:
    """Convert once per (checkpoint, type, mtp) in a session."""
    key = (ckpt, quant, mtp)
    if key not in _built:
        out = ckpt.parent / f"{ckpt.name}-{quant}{'' if mtp else '-nomtp'}.gguf"
        convert(ConvertOptions(checkpoint=ckpt, output=out, quant=quant, mtp=mtp))
        _built[key] = out
    return _built[key]


def prompt_ids() -> list[int]:
    from quantize.qwen35.tokenizer import qwen_tokenizer

    return qwen_tokenizer().encode(PROMPT)


def llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_batch=256, logits_all=True, verbose=False, seed=0)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def kld(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per-position KL(ref || got) of the softmax distributions."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def parsed_or_one_line(argv: list[str], option: str) -> object | None:
    """`option`'s value as `q35 ARGV` parses it, or None when the parser refused it: then exit 2 and
    one line on stderr naming the command and the option (what every usage error must be)."""
    import contextlib
    import io

    from q35local.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit as e:
            assert e.code == 2
            line = err.getvalue().strip()
            assert "\n" not in line and line.startswith(f"q35: error: {argv[0]}: argument "), line
            assert f"{option}: " in line, line
            return None
    return getattr(args, option.removeprefix("--").replace("-", "_"))
