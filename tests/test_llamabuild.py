"""How llama.cpp is built for the CPU: the build ladder per CPU, the AMX opt-out checked with the
real compiler, the installed library checked for instructions this CPU cannot run, the self-test's
failure path (a child that really dies of SIGILL), and the regression test the AMX crash asked for:
a prefill of 80 tokens on 2 threads through the real engine."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from q35local import llamabuild as lb
from q35local.machine.cpufeatures import (
    compare,
    describe,
    extra_bufts_safe,
    installed_features,
    parse_system_info,
)

SPR = lb.cpu_flags(
    "flags : fpu sse sse2 ssse3 sse4_1 sse4_2 pni avx avx2 fma f16c bmi2 avx512f avx512bw avx512vbmi "
    "avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
)
ZEN3 = lb.cpu_flags("flags : fpu sse sse2 ssse3 sse4_1 sse4_2 pni avx avx2 fma f16c bmi2")
NOAMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")


def test_an_amx_xeon_builds_native_minus_amx_first() -> None:
    ladder = lb.plan_builds("auto", "x86_64", SPR, NOAMX)
    assert [c.name for c in ladder] == ["native-no-amx", "portable", "baseline"]
    assert ladder[0].cflags == NOAMX and "-DGGML_NATIVE=ON" in ladder[0].cmake_args
    portable = ladder[1].cmake_args
    assert "-DGGML_AVX512=ON" in portable and "-DGGML_AVX512_BF16=ON" in portable
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF"} <= set(portable)


def test_native_keeps_amx_only_ahead_of_a_safer_build() -> None:
    assert [c.name for c in lb.plan_builds("native", "x86_64", SPR, NOAMX)] == [
        "native",
        "native-no-amx",
        "portable",
        "baseline",
    ]
    assert [c.name for c in lb.plan_builds("native", "arm64", frozenset({"asimd"}), ())] == [
        "native",
        "portable",
        "baseline",
    ]
    assert [c.name for c in lb.plan_builds("portable", "x86_64", ZEN3, NOAMX)] == ["portable", "baseline"]
    with pytest.raises(ValueError, match="unknown CPU build"):
        lb.plan_builds("fast", "x86_64", ZEN3, NOAMX)


def test_portable_sets_every_option_from_what_the_os_reports() -> None:
    opts = lb.x86_portable_options(ZEN3)
    assert "-DGGML_AVX2=ON" in opts and "-DGGML_AVX512=OFF" in opts and "-DGGML_AVX_VNNI=OFF" in opts
    # ggml's AVX2 code needs FMA and F16C: a CPU (or a VM) that reports AVX2 without them gets none
    odd = lb.x86_portable_options(frozenset({"sse4_2", "avx", "avx2", "avx512f"}))
    assert "-DGGML_AVX2=OFF" in odd and "-DGGML_AVX512=OFF" in odd and "-DGGML_AVX=ON" in odd
    # with GGML_NATIVE=OFF ggml turns AVX2/FMA/F16C/BMI2 on by default: the baseline must say OFF
    base = lb.x86_portable_options(frozenset())
    assert all(o.endswith("=OFF") for o in base)
    assert {"-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_SSE42=OFF"} <= set(base)


def test_cpuinfo_flags_and_system_info_parse() -> None:
    text = (Path(__file__).parent / "data" / "probe" / "cpuinfo-xeon-amx.txt").read_text()
    flags = lb.cpu_flags(text)
    assert {"amx_tile", "amx_int8", "avx512f"} <= flags
    used = parse_system_info(
        "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 "
        "| REPACK = 1 |"
    )
    assert used == {"SSE3", "SSSE3", "AVX", "AVX2", "AVX512", "AMX_INT8"}
    check = compare(used, ZEN3)
    assert check.missing == {"AVX512", "AMX_INT8"} and not check.ok
    assert any("MISMATCH: the build uses AVX512" in line for line in describe(check, None))
    on_xeon = compare(used - {"AMX_INT8"}, flags)
    assert on_xeon.ok and "AMX_INT8" in on_xeon.unused
    assert any("PR #26954" in line for line in describe(on_xeon, None))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flags")
def test_the_opt_out_removes_amx_for_a_sapphire_rapids_target() -> None:
    """What the build would compile on an AMX Xeon, asked of this machine's real compiler: with the
    flags auto uses, ggml's AMX code (under __AMX_INT8__) is not compiled; without them it is."""
    cc = lb.compiler()
    flags = lb.no_amx_flags(cc)
    assert "-mno-amx-int8" in flags and "-mno-amx-tile" in flags
    with_amx = lb.amx_macros(cc, "sapphirerapids", ())
    if with_amx is None:
        pytest.skip(f"{cc} does not know -march=sapphirerapids")
    assert "__AMX_INT8__" in with_amx
    assert lb.amx_macros(cc, "sapphirerapids", flags) == []
    assert lb.amx_macros(cc, "native", flags) == []


@pytest.mark.skipif(shutil.which("objdump") is None or platform.machine() != "x86_64", reason="x86 objdump")
def test_the_installed_library_uses_no_register_this_cpu_lacks() -> None:
    """The installed libggml-cpu, disassembled: AMX tiles only where the CPU has AMX, zmm only with
    AVX-512, ymm only with AVX."""
    lib = lb.cpu_library()
    assert lib is not None
    asm = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True
    ).stdout
    regs = set(re.findall(r"%(tmm|zmm|ymm)\d", asm))
    flags = lb.cpu_flags()
    need = {"tmm": "amx_tile", "zmm": "avx512f", "ymm": "avx"}
    assert {r for r in regs if need[r] not in flags} == set()
    assert "tmm" not in regs  # auto never compiles AMX in


def test_a_self_test_that_dies_is_named_by_its_signal() -> None:
    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    assert lb.judge(die, 60) == (False, "died of SIGILL")
    assert lb.judge([sys.executable, "-c", "print('fine')"], 60) == (True, "fine")
    assert lb.judge([sys.executable, "-c", "import sys; sys.exit('no model')"], 60) == (
        False,
        "exit 1: no model",
    )
    assert lb.judge([sys.executable, "-c", "import time; time.sleep(5)"], 1) == (False, "no answer in 1 s")


def test_a_build_that_dies_is_replaced_by_the_next_one(tmp_path: Path) -> None:
    """verify's failure path, forced: the first build's self-test really dies of SIGILL; verify
    installs the next build in the ladder and keeps it once its self-test passes; the record says
    what died and why. (The install step here writes the record without compiling: a rebuild takes
    minutes.)"""
    record = tmp_path / "llama-build.json"
    ladder = lb.ladder_for("auto")
    lb.write_record(lb.record_for("auto", 0, "first.whl", []), record)
    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    runs = iter([die, [sys.executable, "-c", "print('prefill of 80 tokens')"]])
    installed: list[str] = []

    def install(choice: str, index: int, failed: list[dict[str, str]]) -> lb.BuildRecord:
        installed.append(ladder[index].name)
        rec = lb.record_for(choice, index, f"{ladder[index].name}.whl", failed)
        lb.write_record(rec, record)
        return rec

    rec = lb.verify("auto", selftest=lambda: lb.judge(next(runs), 60), install=install, record_path=record)
    assert installed == [ladder[1].name]
    assert rec.config == ladder[1].name and rec.selftest == "passed"
    assert rec.failed == [{"config": ladder[0].name, "why": "died of SIGILL"}]
    assert lb.read_record(record) == rec

    # every build dies: setup stops with one line naming them all, and records the failure
    lb.write_record(lb.record_for("auto", len(ladder) - 1, "last.whl", []), record)
    with pytest.raises(SystemExit, match=f"no llama.cpp build passed its self-test here: {ladder[-1].name}"):
        lb.verify("auto", selftest=lambda: lb.judge(die, 60), install=install, record_path=record)
    assert lb.read_record(record).selftest == "failed"


def test_an_unverified_amx_build_runs_without_extra_buffer_types() -> None:
    rec = lb.record_for("native", 0, "w.whl", [])
    amx = frozenset({"AVX2", "AMX_INT8"})
    assert extra_bufts_safe(frozenset({"AVX2"}), None, "") is True
    assert extra_bufts_safe(amx, None, "lib 1 2") is False
    assert extra_bufts_safe(amx, rec, "lib 1 2") is False  # recorded, not self-tested
    rec.selftest, rec.library = "passed", "lib 1 2"
    assert extra_bufts_safe(amx, rec, "lib 1 2") is True
    assert extra_bufts_safe(amx, rec, "lib 9 9") is False  # the library was replaced since


def test_installed_build_features_match_this_cpu() -> None:
    check = compare(installed_features(), lb.cpu_flags())
    assert check.ok, check.missing


def test_a_long_prefill_on_two_threads_through_the_real_engine(moe_ckpt: Path) -> None:
    """The AMX crash's regression test: the engine in a child process, 80 prompt tokens in one batch
    on 2 threads with llama.cpp's extra buffer types on, then decoding."""
    from conftest import gguf_for

    gguf = gguf_for(moe_ckpt, "Q8_0")
    code = (
        "import sys; from pathlib import Path; from q35local.engine.selftest import selftest_child; "
        f"selftest_child(Path({str(gguf)!r}), 2, 80)"
    )
    ok, detail = lb.judge([sys.executable, "-c", code], 300)
    assert ok, detail
    assert detail == "prefill of 80 tokens and 8 decoded on 2 threads"


def test_a_passed_build_stays_until_its_options_change(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = lb.record_for("auto", 0, "w.whl", [])
    rec.selftest = "passed"
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    assert lb.still_good(rec, "auto")
    assert not lb.still_good(rec, "portable")
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")  # the user asks for CUDA: rebuild
    assert not lb.still_good(rec, "auto")
    rec2 = lb.record_for("auto", 0, "w.whl", [])
    assert rec2.cmake_args[-1] == "-DGGML_CUDA=on"
    rec2.selftest = "failed"
    assert not lb.still_good(rec2, "auto")
