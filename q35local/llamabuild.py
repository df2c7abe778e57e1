"""How `make setup` builds llama.cpp (llama-cpp-python from source) for the CPU it lands on.

`-march=native` (llama.cpp's default) lets the compiler use every instruction the CPU reports, AMX
included, and llama.cpp's AMX kernels crash on multi-token prompts (a worker thread's `tilezero`;
upstream PR #26954, open). So:
- x86-64, `auto` (default): native minus AMX (`-mno-amx-*` for every AMX option the compiler knows;
  GCC and Clang let an explicit -mno- win over -march whatever the order), checked before the build:
  the compiler, given those flags, must define no `__AMX_*__` macro (ggml compiles its AMX code only
  under `__AMX_INT8__`).
- every build is then self-tested in a subprocess: the generated tiny Qwen 3.5 MoE, a prefill of
  80 tokens on 2+ threads, then decoding, with llama.cpp's extra (repacked/AMX) buffer types on. A
  build whose self-test dies is replaced by the next one in its ladder: `portable` (GGML_NATIVE=OFF,
  only the ISA extensions the OS reports in /proc/cpuinfo), then `baseline` (no extension at all).
- `native`: llama.cpp's default, AMX kept, first in the ladder; kept only if its self-test passes.
- `portable`: start there.

Each build's wheel is cached per user under a key of everything that shaped it (config, flags, the
compiler, and for native builds the CPU itself): pip's own wheel cache ignores CMAKE_ARGS, so a wheel
built for another config (or another CPU, in a copied home) would be reused silently.

The record of what was installed (`build_record_path()`) is what `q35 inspect`/`q35 fit` show, and what
the engine reads to decide whether llama.cpp's extra buffer types are safe (see `extra_bufts_safe`).

This module's build half imports only the standard library: it runs before the project's dependencies
are installed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from q35local.base.files import write_atomically
from q35local.base.settings import cache_dir  # stdlib only, like this module
from q35local.base.units import MiB  # likewise

LLAMA_CPP_PYTHON = "0.3.36"
CHOICES = ("auto", "native", "portable")
# every AMX option some GCC or Clang knows (a compiler that lacks one cannot emit it either)
AMX_OPTIONS = ("tile", "int8", "bf16", "fp16", "complex", "fp8", "tf32", "transpose", "avx512", "movrs")
# /proc/cpuinfo flag -> the ggml CMake option that compiles for it (GGML_NATIVE=OFF builds)
X86_OPTIONS = (
    ("sse4_2", "GGML_SSE42"),
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)
SELFTEST_PROMPT_TOKENS = 80
SELFTEST_TIMEOUT_S = 600


@dataclass(frozen=True)
class BuildConfig:
    """One way to build llama.cpp: CMake options plus compiler flags, and why."""

    name: str  # "native", "native-no-amx", "portable", "baseline"
    cmake_args: tuple[str, ...]
    cflags: tuple[str, ...]
    why: str


def x86_portable_options(flags: frozenset[str]) -> tuple[str, ...]:
    """GGML_NATIVE=OFF and every ggml x86 option set explicitly: ON for each extension the OS
    reports, OFF for the rest (with GGML_NATIVE=OFF, ggml defaults SSE4.2 to AVX2, FMA, F16C and
    BMI2 to ON whatever the CPU). ggml's AVX2 code assumes FMA and F16C come with it (as on every
    AVX2 CPU since Haswell), so AVX2 and AVX-512 are only enabled with them."""
    on = {opt for flag, opt in X86_OPTIONS if flag in flags}
    if not {"GGML_FMA", "GGML_F16C"} <= on:
        on -= {"GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}
    if "GGML_AVX512" not in on:
        on -= {"GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}
    opts = [f"-D{opt}={'ON' if opt in on else 'OFF'}" for _, opt in X86_OPTIONS]
    return ("-DGGML_NATIVE=OFF", *opts, *(f"-DGGML_AMX_{x}=OFF" for x in ("TILE", "INT8", "BF16")))


def plan_builds(
    choice: str, machine: str, flags: frozenset[str], no_amx_flags: tuple[str, ...]
) -> list[BuildConfig]:
    """The builds to try, in order: the first whose self-test passes is kept. Pure: the CPU's
    reported flags and the compiler's AMX opt-outs are inputs."""
    if choice not in CHOICES:
        raise ValueError(f"unknown CPU build {choice!r} (one of: {', '.join(CHOICES)})")
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "i386")
    baseline = BuildConfig(
        "baseline",
        x86_portable_options(frozenset()) if x86 else ("-DGGML_NATIVE=OFF",),
        (),
        "no ISA extension beyond the architecture's base: runs on any CPU of this architecture",
    )
    portable = BuildConfig(
        "portable",
        x86_portable_options(flags) if x86 else ("-DGGML_NATIVE=OFF",),
        (),
        "only the extensions the OS reports enabled, no AMX, generic tuning",
    )
    native = BuildConfig(
        "native", ("-DGGML_NATIVE=ON",), (), "llama.cpp's default: -march=native, AMX included"
    )
    ladder = [portable, baseline]
    if choice == "portable":
        return ladder
    if x86 and "amx_tile" in flags and choice == "auto":
        no_amx = BuildConfig(
            "native-no-amx",
            ("-DGGML_NATIVE=ON",),
            no_amx_flags,
            "-march=native minus AMX (llama.cpp's AMX kernels crash on multi-token prompts, PR #26954)",
        )
        return [no_amx, *ladder]
    if x86 and choice == "auto":
        # no AMX here, but the flags still go in: the same build must not grow AMX on a compiler upgrade
        return [
            BuildConfig("native-no-amx", ("-DGGML_NATIVE=ON",), no_amx_flags, "-march=native (no AMX)"),
            *ladder,
        ]
    if choice == "native" and x86 and "amx_tile" in flags:
        no_amx = BuildConfig("native-no-amx", ("-DGGML_NATIVE=ON",), no_amx_flags, "-march=native minus AMX")
        return [native, no_amx, *ladder]
    return [native, *ladder]


@functools.cache
def read_cpuinfo() -> str | None:
    """/proc/cpuinfo's text, read once per process (make setup, the probe and the build check all
    need it, and it does not change under a running process); None where there is none (macOS,
    Windows) or it cannot be read. A /proc file: stat says 0 bytes, so the read itself is bounded;
    bytes that are not UTF-8 are replaced."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return f.read(16 * MiB).decode("utf-8", errors="replace")
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The ISA flags the OS reports: /proc/cpuinfo's `flags` (x86) or `Features` (ARM) line; the
    kernel leaves out what it has not enabled (AVX-512 without its XSAVE state, say). Pure when
    given the text (the tests' recordings); without it, this machine's (`read_cpuinfo`)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo() or ""
    for line in cpuinfo.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(val.split())
    return frozenset()


def compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or "cc"


def _compile_ok(cc: str, args: list[str]) -> subprocess.CompletedProcess | None:
    try:
        r = subprocess.run(
            [cc, *args, "-x", "c", "-E", "-"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r if r.returncode == 0 else None


def no_amx_flags(cc: str) -> tuple[str, ...]:
    """`-mno-amx-X` for every AMX option this compiler accepts."""
    return tuple(f"-mno-amx-{o}" for o in AMX_OPTIONS if _compile_ok(cc, ["-Werror", f"-mno-amx-{o}"]))


def amx_macros(cc: str, march: str, cflags: tuple[str, ...]) -> list[str] | None:
    """The `__AMX_*__` macros the compiler defines with `-march=<march>` and `cflags`: what ggml's
    AMX code is compiled under. None if the compiler cannot say (unknown -march, say)."""
    r = _compile_ok(cc, [f"-march={march}", *cflags, "-dM"])
    if r is None:
        return None
    return sorted(m for m in re.findall(r"#define (__AMX_\w+__)", r.stdout))


def compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return cc
    return out.splitlines()[0] if out else cc


def cpu_identity() -> str:
    """What a native build depends on: the CPU model and its flags (a Mac: its chip and sysctl's
    feature list), so that a cached native wheel is never reused on another CPU."""
    model = ""
    cpuinfo = read_cpuinfo()
    if cpuinfo is not None:
        for line in cpuinfo.splitlines():
            if line.startswith(("model name", "Hardware", "CPU part")):
                model = line.partition(":")[2].strip()
                break
    else:
        try:
            cmd = ["sysctl", "machdep.cpu.brand_string", "hw.optional"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        model = out or platform.processor()
    return f"{platform.machine()} {model} {' '.join(sorted(cpu_flags(cpuinfo)))}"


def user_cmake_args() -> tuple[str, ...]:
    """CMAKE_ARGS from the environment (e.g. -DGGML_CUDA=on), kept after ours so the user wins."""
    return tuple(shlex.split(os.environ.get("CMAKE_ARGS", "")))


def wheel_key(cfg: BuildConfig, cc: str, extra: tuple[str, ...]) -> str:
    parts = [LLAMA_CPP_PYTHON, cfg.name, *cfg.cmake_args, *cfg.cflags, *extra, compiler_id(cc)]
    parts.append(f"py{sys.version_info.major}{sys.version_info.minor} {sys.platform}")
    if "-DGGML_NATIVE=ON" in cfg.cmake_args:
        parts.append(cpu_identity())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"q35 setup: {msg}", flush=True)


def build_wheel(cfg: BuildConfig, python: str = sys.executable) -> Path:
    """The wheel for `cfg`: from the per-user cache, or built now (minutes)."""
    cc = compiler()
    extra = user_cmake_args()
    where = cache_dir() / "llama-wheels" / wheel_key(cfg, cc, extra)
    found = sorted(where.glob("llama_cpp_python-*.whl"))
    if found:
        _say(f"llama.cpp {cfg.name}: cached wheel {found[-1]}")
        return found[-1]
    sdist_dir = cache_dir() / "llama-sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        _say(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source")
        pip = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", str(sdist_dir), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], check=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = shlex.join([*cfg.cmake_args, *extra])
    for var in ("CFLAGS", "CXXFLAGS"):
        env[var] = " ".join([env.get(var, ""), *cfg.cflags]).strip()
    where.mkdir(parents=True, exist_ok=True)
    log = where / "build.log"
    _say(
        f"building llama.cpp ({cfg.name}: {cfg.why}); several minutes on 2 cores, log: {log}\n"
        f"  CMAKE_ARGS={env['CMAKE_ARGS']}" + (f" CFLAGS={env['CFLAGS']}" if cfg.cflags else "")
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=where) as tmp, open(log, "w") as out:
        # --no-cache-dir: pip's wheel cache would hand back a wheel built with other CMAKE_ARGS
        r = subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp, str(sdist)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        built = sorted(Path(tmp).glob("llama_cpp_python-*.whl"))
        if r.returncode != 0 or not built:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit("\n".join(["q35 setup: the llama.cpp build failed; its log ends:", *tail]))
        final = where / built[0].name
        os.replace(built[0], final)
    _say(f"built in {time.monotonic() - t0:.0f} s: {final}")
    (where / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return final


def pip_install(wheel: Path, python: str = sys.executable) -> None:
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
    )


# --- the record of the installed build ---------------------------------------------------------


@dataclass
class BuildRecord:
    choice: str
    ladder: list[str]  # config names in the order they are tried
    config: str  # the one installed now
    cmake_args: list[str]
    cflags: list[str]
    wheel: str
    library: str = ""  # identity of libggml-cpu (size, mtime) when the self-test ran
    selftest: str = "not run"  # "passed" or "not run"
    selftest_detail: str = ""
    failed: list[dict[str, str]] = field(default_factory=list)  # {"config", "why"} for each that died


def build_record_path() -> Path:
    return Path(sys.prefix) / "share" / "q35local" / "llama-build.json"


def read_record(path: Path | None = None) -> BuildRecord | None:
    path = path or build_record_path()
    try:
        data = json.loads(path.read_text())
        return BuildRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(rec: BuildRecord, path: Path | None = None) -> None:
    write_atomically(path or build_record_path(), json.dumps(asdict(rec), indent=1).encode())


def cpu_library() -> Path | None:
    """The installed libggml-cpu (where llama-cpp-python puts it), without importing llama_cpp."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    found = sorted(lib.glob("libggml-cpu*.so")) + sorted(lib.glob("libggml-cpu*.dylib"))
    found += sorted(lib.glob("ggml-cpu*.dll"))
    return found[0] if found else None


def library_identity(lib: Path | None) -> str:
    if lib is None:
        return ""
    st = lib.stat()
    return f"{lib.name} {st.st_size} {st.st_mtime_ns}"


# --- the self-test --------------------------------------------------------------------------------


def run_selftest(python: str = sys.executable, timeout: float = SELFTEST_TIMEOUT_S) -> tuple[bool, str]:
    """(passed, what happened) from a fresh interpreter, so a crash kills it rather than setup."""
    threads = max(2, min(4, os.cpu_count() or 2))
    cmd = [python, "-m", "q35local.engine.selftest", "--threads", str(threads)]
    return judge(cmd, timeout)


def judge(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """Run a self-test command: passed only if it exits 0. A signal is named (SIGILL: an instruction
    this CPU or OS will not run)."""
    import signal

    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no answer in {timeout:.0f} s"
    if r.returncode == 0:
        return True, (r.stdout.strip().splitlines() or ["passed"])[-1]
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        return False, f"died of {name}"
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
    return False, f"exit {r.returncode}: {tail}"


# --- the two setup steps --------------------------------------------------------------------------


def ladder_for(choice: str) -> list[BuildConfig]:
    cc = compiler()
    flags = cpu_flags()
    noamx = no_amx_flags(cc) if platform.machine().lower() in ("x86_64", "amd64") else ()
    return plan_builds(choice, platform.machine(), flags, noamx)


def amx_left(cfg: BuildConfig) -> list[str]:
    """Before building a no-AMX config: the `__AMX_*__` macros the compiler still defines with its
    flags and -march=native (ggml compiles its AMX code under them). Empty is the only good answer;
    a compiler that cannot say leaves the verdict to the self-test."""
    return amx_macros(compiler(), "native", cfg.cflags) or []


def record_for(choice: str, index: int, wheel: str, failed: list[dict[str, str]]) -> BuildRecord:
    ladder = ladder_for(choice)
    cfg = ladder[index]
    return BuildRecord(
        choice=choice,
        ladder=[c.name for c in ladder],
        config=cfg.name,
        cmake_args=[*cfg.cmake_args, *user_cmake_args()],
        cflags=list(cfg.cflags),
        wheel=wheel,
        failed=failed,
    )


def install(choice: str, index: int = 0, failed: list[dict[str, str]] | None = None) -> BuildRecord:
    """Build (or take from the cache) the ladder's `index`-th build, install it, record it."""
    ladder = ladder_for(choice)
    cfg = ladder[index]
    left = amx_left(cfg) if cfg.name == "native-no-amx" else []
    if left and index + 1 < len(ladder):  # also when the compiler knew no -mno-amx-* option at all
        why = f"{compiler()} still defines {', '.join(left)} with {' '.join(cfg.cflags) or 'no opt-out flag'}"
        _say(f"not building {cfg.name}: {why}")
        return install(choice, index + 1, [*(failed or []), {"config": cfg.name, "why": why}])
    wheel = build_wheel(cfg)
    pip_install(wheel)
    rec = record_for(choice, index, str(wheel), failed or [])
    write_record(rec)
    return rec


def verify(
    choice: str,
    *,
    selftest: Callable[[], tuple[bool, str]] = run_selftest,
    install: Callable[[str, int, list[dict[str, str]]], BuildRecord] = install,
    record_path: Path | None = None,
) -> BuildRecord:
    """Self-test the installed build; while it dies, install the next one in the ladder and test
    again. Ends with a build that passed, or exits naming every build and how it died."""
    rec = read_record(record_path)
    if rec is None or rec.choice != choice:
        rec = install(choice, 0, [])
    while True:
        _say(f"self-test of the {rec.config} build: {SELFTEST_PROMPT_TOKENS}-token prefill on 2+ threads")
        ok, detail = selftest()
        if ok:
            rec.selftest, rec.selftest_detail = "passed", detail
            rec.library = library_identity(cpu_library())
            write_record(rec, record_path)
            _say(f"self-test passed ({detail}); llama.cpp build: {rec.config}")
            return rec
        _say(f"the {rec.config} build {detail}: it cannot run here; trying the next build")
        failed = [*rec.failed, {"config": rec.config, "why": detail}]
        nxt = rec.ladder.index(rec.config) + 1
        if nxt >= len(rec.ladder):
            rec.failed, rec.selftest = failed, "failed"
            write_record(rec, record_path)
            raise SystemExit(
                "q35 setup: no llama.cpp build passed its self-test here: "
                + "; ".join(f"{f['config']} {f['why']}" for f in failed)
            )
        rec = install(choice, nxt, failed)


def still_good(rec: BuildRecord | None, choice: str) -> bool:
    """Whether the installed build can stay (make setup runs again on every pyproject change): its
    self-test passed, under the same choice, with the CMake options this machine and CMAKE_ARGS
    would give it now. Anything else starts the ladder from the top."""
    if rec is None or rec.choice != choice or rec.selftest != "passed" or cpu_library() is None:
        return False
    names = [c.name for c in ladder_for(choice)]
    if rec.config not in names:
        return False
    now = record_for(choice, names.index(rec.config), rec.wheel, rec.failed)
    return (now.cmake_args, now.cflags) == (rec.cmake_args, rec.cflags)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m q35local.llamabuild", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    for name in ("install", "verify"):
        s = sub.add_parser(name)
        s.add_argument("--cpu", choices=CHOICES, default="auto")
    s = sub.add_parser("plan", help="print the builds that would be tried here")
    s.add_argument("--cpu", choices=CHOICES, default="auto")
    args = p.parse_args(argv)
    if args.step == "install":
        if not still_good(read_record(), args.cpu):
            install(args.cpu)
    elif args.step == "verify":
        rec = read_record()
        if not (rec and rec.selftest == "passed" and rec.library == library_identity(cpu_library())):
            verify(args.cpu)
    else:
        for cfg in ladder_for(args.cpu):
            print(f"{cfg.name}: {shlex.join(cfg.cmake_args)} {' '.join(cfg.cflags)}  ({cfg.why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
