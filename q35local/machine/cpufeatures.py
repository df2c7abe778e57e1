"""Which CPU features the installed llama.cpp build uses, against those this CPU (and its OS) reports.

A build that uses a feature the CPU lacks dies with SIGILL at its first kernel (a venv copied from
another machine, a wheel built elsewhere); one that leaves out a feature the CPU has is slower than
it could be (or was built that way on purpose: AMX, see `llamabuild`). The parsers are pure and
tested on recorded outputs.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass

from q35local.llamabuild import BuildRecord, cpu_flags, read_cpuinfo, read_record

# ggml's feature name (as llama_print_system_info prints it) -> CPU flags that provide it (any one),
# by /proc/cpuinfo's names; a Mac's sysctl features are mapped to the same names.
GGML_TO_CPU: dict[str, tuple[str, ...]] = {
    "SSE3": ("pni", "sse3"),
    "SSSE3": ("ssse3",),
    "AVX": ("avx",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX2": ("avx2",),
    "F16C": ("f16c",),
    "FMA": ("fma",),
    "BMI2": ("bmi2",),
    "AVX512": ("avx512f",),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_INT8": ("amx_int8",),
    "NEON": ("asimd", "neon"),
    "ARM_FMA": ("asimd", "neon"),
    "FP16_VA": ("asimdhp", "fphp"),
    "DOTPROD": ("asimddp",),
    "MATMUL_INT8": ("i8mm",),
    "SVE": ("sve",),
    "SME": ("sme",),
}
# sysctl hw.optional.arm.* (Apple Silicon) -> the /proc/cpuinfo names above
MAC_FEATURES = {
    "FEAT_FP16": "asimdhp",
    "FEAT_DotProd": "asimddp",
    "FEAT_I8MM": "i8mm",
    "FEAT_SME": "sme",
    "FEAT_SVE": "sve",
}
AMX_WHY = "off on purpose: llama.cpp's AMX kernels crash on multi-token prompts (upstream PR #26954)"


def parse_system_info(text: str) -> frozenset[str]:
    """`llama_print_system_info()` ("CPU : SSE3 = 1 | AVX2 = 1 | ... | OPENMP = 1 |") → the ISA
    features the CPU backend was compiled with (non-ISA entries such as OPENMP are left out)."""
    on = set()
    for part in text.replace("\n", "|").split("|"):
        name, sep, val = part.rpartition("=")
        name = name.rpartition(":")[2].strip()
        if sep and val.strip() not in ("", "0") and name in GGML_TO_CPU:
            on.add(name)
    return frozenset(on)


def parse_mac_sysctl(text: str) -> frozenset[str]:
    """`sysctl hw.optional.arm` → CPU flags in /proc/cpuinfo's names (NEON is always there)."""
    flags = {"asimd"}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        feat = key.strip().rpartition(".")[2]
        if sep and val.strip() == "1" and feat in MAC_FEATURES:
            flags.add(MAC_FEATURES[feat])
    return frozenset(flags)


def cpu_reported() -> frozenset[str] | None:
    """This CPU's flags as the OS reports them; None where it cannot be read."""
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "hw.optional.arm"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        return parse_mac_sysctl(out) if platform.machine() == "arm64" else None
    cpuinfo = read_cpuinfo()
    return None if cpuinfo is None else cpu_flags(cpuinfo)


@dataclass(frozen=True)
class BuildCheck:
    used: frozenset[str]  # ggml features the build has
    missing: frozenset[str]  # used, but the CPU does not report them: this build crashes here
    unused: frozenset[str]  # the CPU has them, the build does not use them

    @property
    def ok(self) -> bool:
        return not self.missing


def compare(used: frozenset[str], cpu: frozenset[str]) -> BuildCheck:
    """The build's features against the CPU's flags. A feature only counts for the architecture it
    belongs to (an ARM build is not "missing AVX")."""
    missing = frozenset(f for f in used if not any(c in cpu for c in GGML_TO_CPU[f]))
    unused = frozenset(
        f for f, flags in GGML_TO_CPU.items() if f not in used and any(c in cpu for c in flags)
    )
    return BuildCheck(used, missing, unused)


def installed_features() -> frozenset[str]:
    from llama_cpp import llama_cpp

    return parse_system_info(llama_cpp.llama_print_system_info().decode(errors="replace"))


def describe(check: BuildCheck, record: BuildRecord | None) -> list[str]:
    """Lines for `q35 inspect` and `q35 fit`: how the build was made, what it uses, what it lacks."""
    lines = []
    if record is not None:
        test = f"self-test {record.selftest}" + (
            f" ({record.selftest_detail})" if record.selftest_detail else ""
        )
        failed = "".join(f"; {f['config']} {f['why']}" for f in record.failed)
        lines.append(f"llama.cpp build: {record.config} ({record.choice}), {test}{failed}")
    else:
        lines.append("llama.cpp build: not made by `make setup` (no build record in this environment)")
    lines.append("CPU features it uses: " + (" ".join(sorted(check.used)) or "none beyond the base ISA"))
    for f in sorted(check.missing):
        lines.append(
            f"MISMATCH: the build uses {f} but this CPU does not report it: it will crash here "
            "(Illegal instruction); run `make setup` again on this machine"
        )
    if check.unused:
        why = {"AMX_INT8": AMX_WHY}
        lines.append(
            "the CPU also has, unused: "
            + ", ".join(f"{f} ({why[f]})" if f in why else f for f in sorted(check.unused))
        )
    return lines


def extra_bufts_safe(used: frozenset[str], record: BuildRecord | None, library_id: str) -> bool:
    """Whether llama.cpp may use its extra buffer types (weight repacking, and AMX where compiled in).
    A build with AMX is trusted only if make setup's self-test passed on this very library; without
    that (a llama-cpp-python built by pip with llama.cpp's defaults on an AMX Xeon) the extra buffer
    types are turned off, which keeps the AMX kernels from ever running."""
    if "AMX_INT8" not in used:
        return True
    return record is not None and record.selftest == "passed" and record.library == library_id


def report_lines() -> list[str]:
    """The installed llama.cpp build against this CPU, for `q35 inspect` and `q35 fit`'s probe."""
    try:
        used = installed_features()
    except (OSError, AttributeError, ImportError) as e:
        return [f"llama.cpp's libraries did not load ({e})"]
    cpu = cpu_reported()
    if cpu is None:
        return [f"llama.cpp CPU features: {' '.join(sorted(used))} (this CPU's own list is unreadable)"]
    return describe(compare(used, cpu), read_record())
