"""`q35 run` (the chat engine headless, real llama.cpp on the tiny GGUF) and `q35 pull` (offline HF cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from PIL import Image
from test_fuzz_gguf import copy_with
from test_hub import make_cache

from q35local.commands.pull import choose_files
from quantize.convert import ConvertOptions, convert
from quantize.synth import spec_for, write_checkpoint


def q35(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "q35local.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def tiny(moe_ckpt: Path) -> Path:
    return gguf_for(moe_ckpt, "Q8_0")


def test_run_json(tiny: Path) -> None:
    r = q35("run", str(tiny), "-p", "Hello there", "-n", "16", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) >= {"text", "thinking", "prompt_tokens", "completion_tokens", "prefill_tps", "decode_tps"}
    assert 0 < d["completion_tokens"] <= 16 and d["prompt_tokens"] > 5
    assert d["decode_tps"] > 0 and d["prefill_tps"] > 0
    # thinking mode: the template opened <think>, so the reply so far is reasoning
    assert d["thinking"] and not d["text"]
    again = json.loads(q35("run", str(tiny), "-p", "Hello there", "-n", "16", "--seed", "3", "--json").stdout)
    assert again["thinking"] == d["thinking"]  # a seed makes it reproducible


# `q35 run` with every read of a model's header (ModelProfile from its GGUF) counted
COUNT_HEADER_READS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import q35local.model.profile as profile
    import quantize.gguf_read as gguf_read

    reads = []

    def counted(real):
        def read_gguf(path, *args, **kwargs):
            reads.append(Path(path))
            return real(path, *args, **kwargs)

        return read_gguf

    # every parse of a GGUF header goes through read_gguf (the profile's, and the loader's check)
    gguf_read.read_gguf = profile.read_gguf = counted(gguf_read.read_gguf)
    from q35local.cli import main

    code = main(["run", sys.argv[1], "-p", "hi", "-n", "2", "--json"])
    print(reads.count(Path(sys.argv[1])))
    sys.exit(code)
    """
)


def test_a_start_reads_the_header_once(tiny: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", COUNT_HEADER_READS, str(tiny)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "1"


def test_run_no_think_is_all_answer(tiny: Path) -> None:
    r = q35("run", str(tiny), "-p", "Hello", "-n", "12", "--seed", "1", "--no-think", "--json")
    d = json.loads(r.stdout)
    assert d["text"] and d["thinking"] == ""


def test_run_plain_prints_answer_on_stdout(tiny: Path) -> None:
    r = q35("run", str(tiny), "-p", "Hello", "-n", "8", "--seed", "1", "--no-think")
    assert r.returncode == 0 and r.stdout.strip() and not r.stderr.strip()


def test_run_with_an_image_goes_through_mtmd(tiny: Path, tmp_path: Path) -> None:
    png = tmp_path / "pic.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(png)
    text_only = json.loads(q35("run", str(tiny), "-p", "What is this?", "-n", "4", "--json").stdout)
    r = q35("run", str(tiny), "-p", "What is this?", "--image", str(png), "-n", "4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["prompt_tokens"] > text_only["prompt_tokens"] + 4  # the image's embeddings took positions


def test_run_image_without_mmproj(tiny: Path, tmp_path: Path) -> None:
    lone = tmp_path / "alone.gguf"
    shutil.copyfile(tiny, lone)
    png = tmp_path / "p.png"
    Image.new("RGB", (64, 64), "red").save(png)
    _one_line_error(q35("run", str(lone), "-p", "hi", "--image", str(png)), "no vision projector")


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "text-as-png", "huge-png"])
def test_run_bad_input(tiny: Path, tmp_path: Path, kind: str) -> None:
    model, extra, needle = tiny, [], ""
    if kind == "missing":
        model, needle = tmp_path / "nope.gguf", "nope.gguf"
    elif kind == "corrupt":
        model = tmp_path / "junk.gguf"
        model.write_bytes(b"this is not a model" * 100)
        needle = "junk.gguf"
    elif kind == "truncated":
        model = tmp_path / "cut.gguf"
        model.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
        needle = "cut.gguf"
    elif kind == "text-as-png":
        fake = tmp_path / "notes.png"
        fake.write_text("just some text\n")
        extra, needle = ["--image", str(fake)], "notes.png"
    elif kind == "huge-png":
        big = tmp_path / "big.png"
        Image.new("1", (30000, 30000)).save(big)
        extra, needle = ["--image", str(big)], "big.png"
    _one_line_error(q35("run", str(model), "-p", "hi", "-n", "2", *extra), needle)


def test_run_mmproj_from_another_model(tiny: Path, tmp_path: Path) -> None:
    other = write_checkpoint(tmp_path / "wide", spec_for("tiny-moe", hidden_size=128, name="wide"))
    out = tmp_path / "wide.gguf"
    convert(ConvertOptions(checkpoint=other, output=out, quant="Q8_0"))
    _one_line_error(
        q35("run", str(tiny), "-p", "hi", "--mmproj", str(tmp_path / "wide.mmproj.gguf")), "wide.mmproj.gguf"
    )


def test_template_that_reaches_for_python_internals(moe_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "evil"
    shutil.copytree(moe_ckpt, ckpt)
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}"
    (ckpt / "chat_template.jinja").write_text(evil)
    out = tmp_path / "evil.gguf"
    convert(ConvertOptions(checkpoint=ckpt, output=out, quant="Q8_0", write_mmproj=False))
    _one_line_error(q35("run", str(out), "-p", "hi", "-n", "2"), "chat_template")


# --- q35 pull -----------------------------------------------------------------------------------------------


def test_choose_files() -> None:
    files = [
        "Qwen3.5-35B-A3B-Q4_K_M.gguf",
        "Qwen3.5-35B-A3B-UD-Q4_K_XL.gguf",
        "Qwen3.5-35B-A3B-IQ4_K_M.gguf",
        "Q8_0/Qwen3.5-35B-A3B-Q8_0-00001-of-00002.gguf",
        "Q8_0/Qwen3.5-35B-A3B-Q8_0-00002-of-00002.gguf",
        "mmproj-F32.gguf",
        "mmproj-F16.gguf",
        "README.md",
    ]
    assert choose_files(files, "Q4_K_M") == ["Qwen3.5-35B-A3B-Q4_K_M.gguf", "mmproj-F16.gguf"]
    assert choose_files(files, "UD-Q4_K_XL", mmproj=False) == ["Qwen3.5-35B-A3B-UD-Q4_K_XL.gguf"]
    assert choose_files(files, "q8_0")[:2] == [files[3], files[4]]
    from q35local.base.errors import InputError

    with pytest.raises(InputError, match=r"no Q2_K GGUF.*Q4_K_M"):
        choose_files(files, "Q2_K")


def test_pull_offline_from_local_cache(tiny: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(tiny, repo / "q35-tiny-Q8_0.gguf")
    mmproj = tiny.with_name(tiny.name.replace(".gguf", ".mmproj.gguf"))
    shutil.copyfile(mmproj, repo / "mmproj-q35-tiny-F16.gguf")
    (repo / "README.md").write_text("tiny")
    cache = tmp_path / "hub"
    snap = make_cache(repo, cache, "q35/tiny-GGUF")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path)}
    r = q35("pull", "q35/tiny-GGUF", "--quant", "Q8_0", env=env)
    assert r.returncode == 0, r.stderr
    assert str(snap / "q35-tiny-Q8_0.gguf") in r.stdout and "mmproj-q35-tiny-F16.gguf" in r.stdout
    assert f"q35 chat {snap / 'q35-tiny-Q8_0.gguf'}" in r.stdout
    _one_line_error(q35("pull", "q35/tiny-GGUF", "--quant", "Q2_K", env=env), "no Q2_K GGUF")
    _one_line_error(q35("pull", "q35/absent", "--quant", "Q8_0", env=env), "HF_HUB_OFFLINE")


def test_chat_without_a_terminal_points_to_run(tiny: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "q35local.cli", "chat", str(tiny)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_error(r, "q35 run")


def test_a_model_that_will_not_fit_is_stopped_before_loading(tiny: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.toml"
    small.write_text('name = "small box"\nram_gb = 0.25\ncores = 2\n')
    r = q35("run", str(tiny), "-p", "hi", env={"Q35_HARDWARE": str(small)})
    _one_line_error(r, "will not fit on this machine")
    assert "q35 fit" in r.stderr


# --- GGUFs llama.cpp refuses, and the other inputs of inspect, run and kld ---------------------------


NORM = "blk.0.post_attention_norm.weight"


def _rejects(tiny: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Real files llama.cpp would not load, each with what the one line must say."""
    d = tmp_path / "rejects"
    d.mkdir()
    return {
        # header fine, a tensor llama.cpp needs is not there: its own reason, from its log
        "missing tensor": (
            copy_with(tiny, d / "renamed.gguf", rename={NORM: NORM[:-1] + "X"}),
            f"llama.cpp could not load it: check_tensor_dims: tensor '{NORM}' not found",
        ),
        # llama.cpp aborted the whole process (GGML_ASSERT n_expert_used_max <= n_expert)
        "experts used": (
            copy_with(tiny, d / "experts.gguf", values={"qwen35moe.expert_used_count": ("<I", 99)}),
            "qwen35moe.expert_used_count: must be ≤ 8, got 99",
        ),
        # a Python traceback (KeyError: 99) from the old header reader
        "tensor type": (copy_with(tiny, d / "type.gguf", tensor_types={NORM: 99}), "unknown ggml type 99"),
        # an OverflowError traceback: the count was handed to range() on its word
        "key count": (
            copy_with(tiny, d / "count.gguf", header={16: ("<Q", 1 << 60)}),
            "metadata keys, more than",
        ),
    }


def test_inspect_run_and_kld_on_files_llama_cpp_refuses(tiny: Path, tmp_path: Path) -> None:
    for what, (path, needle) in _rejects(tiny, tmp_path).items():
        runs = [["inspect", str(path)]]
        if what in ("missing tensor", "experts used"):  # kld loads through llama-cpp-python's Llama()
            runs.append(["kld", str(path), str(tiny), "--max-tokens", "16"])
        for argv in runs:
            r = q35(*argv)
            _one_line_error(r, needle)
            assert path.name in r.stderr, (what, argv)


def test_inspect_generate_longer_than_its_context(tiny: Path) -> None:
    """inspect loads with a 256-token context: a longer prompt was an EngineError traceback."""
    _one_line_error(q35("inspect", str(tiny), "--generate", "word " * 400), "--generate: the prompt is")


def test_kld_text_that_is_a_fifo(tiny: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "text.txt"
    os.mkfifo(fifo)  # reading it waited for a writer forever
    _one_line_error(q35("kld", str(tiny), str(tiny), "--text", str(fifo)), "text.txt: is not a regular file")


def test_q35_hardware_file_is_checked_by_field(tiny: Path, tmp_path: Path) -> None:
    """A described machine with -4 cores was planned as if real; now its file and field are named."""
    hw = tmp_path / "box.toml"
    hw.write_text("ram_gb = 64\ncores = -4\n")
    _one_line_error(
        q35("run", str(tiny), "-p", "hi", env={"Q35_HARDWARE": str(hw)}), "box.toml: cores: must be ≥ 1"
    )
