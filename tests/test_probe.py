"""The probe's parsers on outputs recorded from real machines, the probe itself with fake tools on PATH
(real subprocesses: a tool that is absent, hangs or fails), hardware files and the named profiles."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest

from q35local.base.errors import InputError
from q35local.base.units import GiB, MiB
from q35local.machine import probe as probe_mod
from q35local.machine.hardware import PROFILES, load_hardware_file, resolve_hardware
from q35local.machine.probe import (
    NVIDIA_QUERY,
    _run,
    apple_hardware,
    parse_cpuinfo,
    parse_nvidia_smi,
    parse_sysctl,
    parse_system_profiler,
    probe,
)
from q35local.machine.spec import Hardware, metal_default_cap, nvidia_bandwidth

DATA = Path(__file__).parent / "data" / "probe"
# absolute paths, resolved before the tests replace PATH
SH, CAT, SLEEP = (shutil.which(t) or f"/bin/{t}" for t in ("sh", "cat", "sleep"))


def rec(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def tool(bindir: Path, name: str, body: str) -> Path:
    """An executable shell script `name` in `bindir`; its body must not rely on PATH (it is the test's)."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text(f"#!{SH}\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def cat(recording: str) -> str:
    return f"exec {CAT} {DATA / recording}"


# ---------------------------------------------------------------- nvidia-smi


def test_nvidia_1x4090() -> None:
    (d,) = parse_nvidia_smi(rec("nvidia_smi_1x4090.txt"))
    assert (d.name, d.kind, d.index) == ("NVIDIA GeForce RTX 4090", "cuda", 0)
    assert d.total_bytes == 24564 * MiB
    assert d.free_bytes == 24077 * MiB
    assert d.usable_bytes == 24077 * MiB
    assert d.bandwidth_gbs == 1008
    assert d.bus == "00000000:01:00.0"


def test_nvidia_2x5090_one_driving_a_desktop() -> None:
    devs = parse_nvidia_smi(rec("nvidia_smi_2x5090.txt"))
    assert [d.index for d in devs] == [0, 1]
    assert all(d.name == "NVIDIA GeForce RTX 5090" and d.kind == "cuda" for d in devs)
    assert all(d.total_bytes == 32607 * MiB and d.bandwidth_gbs == 1792 for d in devs)
    assert [d.free_bytes for d in devs] == [30188 * MiB, 32111 * MiB]
    assert devs[0].usable_bytes < devs[1].usable_bytes  # the desktop's GPU has less room
    assert [d.bus for d in devs] == ["00000000:01:00.0", "00000000:41:00.0"]


def test_nvidia_8xh100() -> None:
    devs = parse_nvidia_smi(rec("nvidia_smi_8xh100.txt"))
    assert len(devs) == 8
    assert [d.index for d in devs] == list(range(8))
    assert all(d.name == "NVIDIA H100 80GB HBM3" for d in devs)
    assert all(d.total_bytes == 81559 * MiB and d.free_bytes == 81004 * MiB for d in devs)
    # SXM5 H100 (HBM3): the plain "H100" entry, not "H100 NVL"/"H100 PCIe" nor "A100 80GB"
    assert nvidia_bandwidth("NVIDIA H100 80GB HBM3") == 3350
    assert all(d.bandwidth_gbs == 3350 for d in devs)
    assert len({d.bus for d in devs}) == 8
    assert devs[-1].bus == "00000000:DB:00.0"


@pytest.mark.parametrize(
    ("name", "gbs"),
    [
        ("NVIDIA H100 PCIe", 2000),
        ("NVIDIA H100 NVL", 3900),
        ("NVIDIA GH200 480GB", 4000),
        ("NVIDIA A100-SXM4-80GB", 2039),
        ("NVIDIA A100-PCIE-40GB", 1555),
        ("NVIDIA GeForce RTX 5090 Laptop GPU", 896),
        ("NVIDIA GeForce RTX 4080 SUPER", 736),
        ("NVIDIA RTX 6000 Ada Generation", 960),
        ("NVIDIA GeForce GTX 1080 Ti", None),
    ],
)
def test_nvidia_bandwidth_longest_match(name: str, gbs: float | None) -> None:
    assert nvidia_bandwidth(name) == gbs


def test_nvidia_na_free_memory_is_unknown() -> None:
    (d,) = parse_nvidia_smi(rec("nvidia_smi_na_free.txt"))
    assert d.name == "NVIDIA A100-SXM4-80GB"
    assert d.total_bytes == 81920 * MiB
    assert d.free_bytes is None
    assert d.usable_bytes == d.total_bytes
    assert d.bandwidth_gbs == 2039
    assert d.bus == "00000000:07:00.0"


@pytest.mark.parametrize("name", ["nvidia_smi_garbage.txt", "nvidia_smi_empty.txt"])
def test_nvidia_garbage_recordings(name: str) -> None:
    assert parse_nvidia_smi(rec(name)) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "No devices were found\n",
        "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 570.133\n",
        # the header that `--format=csv` without noheader prints, with units
        "index, name, memory.total [MiB], memory.free [MiB], pci.bus_id\n",
        "0, NVIDIA GB10, [N/A], [N/A], 0000000F:01:00.0\n",  # total unknown: skipped, not guessed
        "0, , \n,,,,\n\x00\xff\n",
    ],
)
def test_nvidia_garbage_never_raises(text: str) -> None:
    assert parse_nvidia_smi(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "0, NVIDIA GeForce RTX 4090, inf, 1000",  # int(float("inf")) was an OverflowError
        "0, NVIDIA GeForce RTX 4090, nan, 1000",
        "0, NVIDIA GeForce RTX 4090, -24564, 1000",  # a negative GPU was planned as if real
        "0, NVIDIA GeForce RTX 4090, 0, 0",
        "0, NVIDIA GeForce RTX 4090, 1e30, 1000",
    ],
)
def test_nvidia_impossible_totals_skip_the_line(line: str) -> None:
    assert parse_nvidia_smi(line + "\n") == []


@pytest.mark.parametrize("free", ["inf", "-5", "nan", "1e30"])
def test_nvidia_impossible_free_is_unknown(free: str) -> None:
    (d,) = parse_nvidia_smi(f"0, NVIDIA GeForce RTX 4090, 24564, {free}\n")
    assert d.free_bytes is None and d.usable_bytes == 24564 * MiB


def test_nvidia_free_above_total_is_capped() -> None:
    (d,) = parse_nvidia_smi("0, NVIDIA GeForce RTX 4090, 24564, 30000\n")
    assert d.free_bytes == 24564 * MiB


def test_nvidia_short_lines_keep_what_parses() -> None:
    (d,) = parse_nvidia_smi("garbage\n3, Tesla T4, 15360\n")
    assert (d.index, d.name, d.total_bytes, d.free_bytes, d.bus, d.bandwidth_gbs) == (
        3,
        "Tesla T4",
        15360 * MiB,
        None,
        None,
        None,
    )


# ---------------------------------------------------------------- Apple Silicon


def test_sysctl_parse() -> None:
    s = parse_sysctl(rec("sysctl_m3_ultra_512.txt"))
    assert s == {
        "hw.memsize": "549755813888",
        "machdep.cpu.brand_string": "Apple M3 Ultra",
        "hw.physicalcpu": "32",
        "iogpu.wired_limit_mb": "0",
    }
    assert parse_sysctl("") == {}
    assert parse_sysctl("sysctl: unknown oid 'iogpu.wired_limit_mb'") == {
        "sysctl": "unknown oid 'iogpu.wired_limit_mb'"
    }


def test_system_profiler_m3_ultra() -> None:
    assert parse_system_profiler(rec("system_profiler_m3_ultra.json")) == ("Apple M3 Ultra", 80)


@pytest.mark.parametrize(
    "text",
    [
        rec("system_profiler_truncated.json"),
        "",
        "[]",
        "null",
        '{"SPDisplaysDataType": []}',
        '{"SPDisplaysDataType": [{"sppci_model": "Apple M3 Ultra", "sppci_cores": "eighty"}]}',
        '{"SPDisplaysDataType": "none"}',
    ],
)
def test_system_profiler_broken_degrades(text: str) -> None:
    assert parse_system_profiler(text) == (None, None)


@pytest.mark.parametrize(
    ("cores", "want"),
    [("1e999", None), ("-8", None), ("0", None), ("true", None), ("[80]", None), ('"80"', 80), ("80", 80)],
)
def test_system_profiler_impossible_core_counts(cores: str, want: int | None) -> None:
    text = json.dumps({"SPDisplaysDataType": [{"sppci_model": "Apple M3 Ultra", "sppci_cores": 0}]})
    text = text.replace('"sppci_cores": 0', f'"sppci_cores": {cores}')
    # 1e999 (inf) was an OverflowError; a core count that is none leaves the whole entry unknown
    assert parse_system_profiler(text) == (("Apple M3 Ultra", want) if want else (None, None))


def test_system_profiler_nested_too_deeply() -> None:
    assert parse_system_profiler("[" * 100_000) == (None, None)


def test_system_profiler_without_cores() -> None:
    no_cores = json.dumps({"SPDisplaysDataType": [{"sppci_model": "Apple M2"}]})
    assert parse_system_profiler(no_cores) == ("Apple M2", None)


def test_apple_m3_ultra_512_default_wired_limit() -> None:
    hw = apple_hardware(
        parse_sysctl(rec("sysctl_m3_ultra_512.txt")),
        parse_system_profiler(rec("system_profiler_m3_ultra.json")),
    )
    ram = 512 * GiB
    assert hw.unified and hw.kind == "metal"
    assert hw.ram_total == ram
    assert hw.metal_wired_limit_mb == 0
    (gpu,) = hw.devices
    assert gpu.kind == "metal"
    assert gpu.name == "Apple M3 Ultra (80-core GPU)"
    assert gpu.total_bytes == metal_default_cap(ram) == int(ram * 0.75)
    assert gpu.free_bytes is None
    assert gpu.bandwidth_gbs == 819 and hw.ram_bandwidth_gbs == 819
    assert hw.cpu.model == "Apple M3 Ultra" and hw.cpu.cores == 32
    assert "neon" in hw.cpu.flags
    assert any("iogpu.wired_limit_mb" in n for n in hw.notes)
    assert not any("core count unknown" in n for n in hw.notes)


def test_apple_m4_max_128_raised_wired_limit() -> None:
    hw = apple_hardware(
        parse_sysctl(rec("sysctl_m4_max_128.txt")),
        parse_system_profiler(rec("system_profiler_truncated.json")),
    )
    assert hw.unified and hw.kind == "metal"
    assert hw.ram_total == 128 * GiB
    assert hw.metal_wired_limit_mb == 110000
    (gpu,) = hw.devices
    assert gpu.total_bytes == 110000 * MiB
    assert gpu.name == "Apple M4 Max (?-core GPU)"  # system_profiler's JSON was cut short
    assert gpu.bandwidth_gbs == 546
    assert hw.cpu.cores == 16
    assert not any("iogpu.wired_limit_mb" in n for n in hw.notes)
    assert any("core count unknown" in n for n in hw.notes)


def test_apple_binned_m4_max_has_narrower_bus() -> None:
    hw = apple_hardware(parse_sysctl(rec("sysctl_m4_max_128.txt")), ("Apple M4 Max", 32))
    assert hw.devices[0].bandwidth_gbs == 410


@pytest.mark.parametrize(
    "sysctl",
    [
        {},
        {"hw.memsize": "", "hw.physicalcpu": "", "iogpu.wired_limit_mb": ""},
        {"iogpu.wired_limit_mb": "n/a"},
        # garbage where numbers belong was a ValueError; negatives were planned as if real
        {"hw.memsize": "lots", "hw.physicalcpu": "many", "iogpu.wired_limit_mb": "-1"},
        {"hw.memsize": "-549755813888", "hw.physicalcpu": "-32"},
        {"hw.memsize": "inf", "hw.physicalcpu": "nan"},
    ],
)
def test_apple_nothing_known_degrades(sysctl: dict[str, str]) -> None:
    hw = apple_hardware(sysctl, (None, None))
    assert hw.unified and hw.kind == "metal"
    assert hw.ram_total == 0 and hw.cpu.cores is None
    assert hw.devices[0].bandwidth_gbs is None
    assert hw.metal_wired_limit_mb == 0
    assert any("core count unknown" in n for n in hw.notes)


# ---------------------------------------------------------------- /proc/cpuinfo


def test_cpuinfo_amd_epyc() -> None:
    model, flags = parse_cpuinfo(rec("cpuinfo_amd_epyc.txt"))
    assert model == "AMD EPYC 9654 96-Core Processor"
    assert flags == ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "f16c", "fma")


def test_cpuinfo_intel_desktop_no_avx512() -> None:
    model, flags = parse_cpuinfo(rec("cpuinfo_intel_desktop.txt"))
    assert model == "13th Gen Intel(R) Core(TM) i9-13900K"
    assert flags == ("avx", "avx2", "f16c", "fma")  # avx_vnni is not avx512_vnni


def test_cpuinfo_arm_linux() -> None:
    model, flags = parse_cpuinfo(rec("cpuinfo_arm_graviton3.txt"))
    assert model == "unknown CPU"  # arm64 /proc/cpuinfo has no model name, only part numbers
    assert flags == ("neon", "sve")  # asimd is NEON


@pytest.mark.parametrize("text", ["", "garbage\n\x00", "flags\t:\n", "model name\t:"])
def test_cpuinfo_garbage(text: str) -> None:
    model, flags = parse_cpuinfo(text)
    assert isinstance(model, str) and flags == ()


# ---------------------------------------------------------------- probe() with real subprocesses


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that is the whole PATH: no nvidia-smi, sysctl or anything else."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def _no_gpu(hw: Hardware) -> None:
    assert isinstance(hw, Hardware)
    assert hw.devices == () and hw.kind == "cpu"
    assert hw.ram_total > 0
    assert hw.ram_available is not None and 0 < hw.ram_available <= hw.ram_total


def test_probe_with_empty_path(bindir: Path) -> None:
    hw = probe()
    _no_gpu(hw)
    assert not hw.unified
    assert hw.cpu.threads and hw.cpu.threads >= 1
    assert not any("nvidia-smi" in n for n in hw.notes)  # absent is not an error on a CPU-only box


def test_probe_disk_free(bindir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    free = probe(model).disk_free
    assert free is not None and free > 0
    assert abs(free - shutil.disk_usage(tmp_path).free) < 1 << 30
    assert probe(tmp_path / "nowhere" / "m.gguf").disk_free is None  # a note, not a crash


def test_probe_fake_nvidia_smi_2x5090(bindir: Path) -> None:
    log = bindir.parent / "args"
    tool(bindir, "nvidia-smi", f'printf "%s\\n" "$@" > {log}\n{cat("nvidia_smi_2x5090.txt")}')
    hw = probe()
    assert log.read_text().split() == [f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader,nounits"]
    assert hw.kind == "cuda" and not hw.unified
    assert [(d.kind, d.index, d.name) for d in hw.devices] == [
        ("cuda", 0, "NVIDIA GeForce RTX 5090"),
        ("cuda", 1, "NVIDIA GeForce RTX 5090"),
    ]
    assert [d.free_bytes for d in hw.devices] == [30188 * MiB, 32111 * MiB]
    assert not any("bandwidth unknown" in n for n in hw.notes)
    if hw.backends and not any(b.upper().startswith("CUDA") for b in hw.backends):
        assert any("no GPU backend" in n and "GGML_CUDA" in n for n in hw.notes)


def test_probe_fake_nvidia_smi_unknown_gpu_notes_bandwidth(bindir: Path) -> None:
    tool(bindir, "nvidia-smi", "echo '0, NVIDIA GeForce GTX 1080 Ti, 11264, 10987, 00000000:02:00.0'")
    hw = probe()
    (d,) = hw.devices
    assert d.bandwidth_gbs is None
    assert any("GTX 1080 Ti" in n and "bandwidth unknown" in n for n in hw.notes)


def test_probe_fake_nvidia_smi_prints_garbage(bindir: Path) -> None:
    tool(bindir, "nvidia-smi", cat("nvidia_smi_garbage.txt"))
    hw = probe()
    _no_gpu(hw)
    assert any("nvidia-smi printed no GPU" in n for n in hw.notes)


@pytest.mark.parametrize("recording", ["nvidia_smi_garbage.txt", "nvidia_smi_2x5090.txt"])
def test_probe_fake_nvidia_smi_exits_1(bindir: Path, recording: str) -> None:
    tool(bindir, "nvidia-smi", f"{CAT} {DATA / recording}\nexit 1")
    _no_gpu(probe())


def test_probe_fake_nvidia_smi_hangs(bindir: Path) -> None:
    tool(bindir, "nvidia-smi", f"exec {SLEEP} 30")
    t0 = time.monotonic()
    hw = probe()
    dt = time.monotonic() - t0
    assert 4.5 < dt < 6.5, dt  # the 5 s timeout, not the 30 s hang
    _no_gpu(hw)


def test_run_hung_tool_whose_child_holds_stdout(bindir: Path) -> None:
    """The shell is killed at the timeout; its `sleep` child keeps the pipe open and must not block us."""
    pidfile = bindir.parent / "pid"
    tool(bindir, "slowtool", f"{SLEEP} 30 &\necho $! > {pidfile}\nwait")
    t0 = time.monotonic()
    try:
        assert _run(["slowtool"], timeout=0.5) is None
        assert time.monotonic() - t0 < 3
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_run_absent_and_unexecutable(bindir: Path) -> None:
    assert _run(["nvidia-smi"]) is None
    (bindir / "noexec").write_text("#!/nonexistent/interpreter\n")
    (bindir / "noexec").chmod(0o755)
    assert _run(["noexec"]) is None  # OSError from exec, not a crash


# A macOS sysctl: prints "oid: value" for each oid it knows; an unknown oid is an error on stderr and
# exit status 1, unless -i (ignore unknown oids) was given.
FAKE_SYSCTL = """ignore=0
if [ "$1" = "-i" ]; then ignore=1; shift; fi
status=0
for oid in "$@"; do
  found=0
  while IFS= read -r line; do
    case "$line" in "$oid: "*) printf '%s\\n' "$line"; found=1;; esac
  done < {recording}
  if [ $found = 0 ] && [ $ignore = 0 ]; then
    printf "sysctl: unknown oid '%s'\\n" "$oid" >&2; status=1
  fi
done
exit $status"""


def _fake_mac(bindir: Path, monkeypatch: pytest.MonkeyPatch, sysctl: str, profiler: str) -> None:
    monkeypatch.setattr(probe_mod.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(probe_mod.platform, "machine", lambda: "arm64")
    tool(bindir, "sysctl", FAKE_SYSCTL.format(recording=DATA / sysctl))
    tool(bindir, "system_profiler", cat(profiler))


def test_probe_mac_m3_ultra(bindir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mac(bindir, monkeypatch, "sysctl_m3_ultra_512.txt", "system_profiler_m3_ultra.json")
    hw = probe()
    assert hw.unified and hw.kind == "metal"
    assert hw.ram_total == 512 * GiB
    assert hw.ram_available is not None  # this machine's, from psutil
    (gpu,) = hw.devices
    assert gpu.name == "Apple M3 Ultra (80-core GPU)"
    assert gpu.total_bytes == metal_default_cap(512 * GiB)
    assert gpu.bandwidth_gbs == 819
    assert any("iogpu.wired_limit_mb" in n for n in hw.notes)


def test_probe_mac_without_wired_limit_oid(bindir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS before 14 has no iogpu.wired_limit_mb: one unknown oid must not lose the others."""
    _fake_mac(bindir, monkeypatch, "sysctl_m1_max_64_ventura.txt", "system_profiler_truncated.json")
    hw = probe()
    assert hw.cpu.model == "Apple M1 Max"
    assert hw.ram_total == 64 * GiB
    assert hw.devices[0].bandwidth_gbs == 400
    assert hw.devices[0].total_bytes == metal_default_cap(64 * GiB)


def test_probe_mac_tools_missing(bindir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_mod.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(probe_mod.platform, "machine", lambda: "arm64")
    hw = probe()
    assert hw.unified and hw.kind == "metal"
    assert hw.ram_total > 0  # psutil's, when sysctl gave nothing
    assert any("core count unknown" in n for n in hw.notes)


# ---------------------------------------------------------------- hardware files and profiles


TWO_GPUS_TOML = """\
name = "workstation"
ram_gb = 128
ram_bandwidth_gbs = 96
cpu = "AMD Ryzen 9 9950X"
cores = 16

[[gpu]]
name = "NVIDIA GeForce RTX 5090"
memory_gb = 32

[[gpu]]
name = "NVIDIA GeForce RTX 4090"
kind = "cuda"
memory_gb = 24
bandwidth_gbs = 1000
"""


def test_load_toml_two_gpus(tmp_path: Path) -> None:
    p = tmp_path / "ws.toml"
    p.write_text(TWO_GPUS_TOML)
    hw = load_hardware_file(p)
    assert hw.name == "workstation"
    assert hw.ram_total == 128 * GiB and hw.ram_bandwidth_gbs == 96
    assert hw.cpu.model == "AMD Ryzen 9 9950X" and hw.cpu.cores == 16
    assert [(d.name, d.kind, d.index) for d in hw.devices] == [
        ("NVIDIA GeForce RTX 5090", "cuda", 0),
        ("NVIDIA GeForce RTX 4090", "cuda", 1),
    ]
    assert [d.total_bytes for d in hw.devices] == [32 * GiB, 24 * GiB]
    assert [d.bandwidth_gbs for d in hw.devices] == [1792, 1000]  # from the table, then as given
    assert not hw.unified and hw.kind == "cuda"
    assert hw.backends == ("CUDA", "CPU")


def test_load_json_mac(tmp_path: Path) -> None:
    p = tmp_path / "mac.json"
    p.write_text(json.dumps({"ram_gb": 64, "gpu": [{"name": "Apple M1 Max", "kind": "metal"}]}))
    hw = load_hardware_file(p)
    assert hw.name == "mac"
    assert hw.unified and hw.kind == "metal" and hw.metal_wired_limit_mb == 0
    assert hw.devices[0].total_bytes == metal_default_cap(64 * GiB)
    assert hw.backends == ("Metal", "CPU")


def test_load_cpu_only(tmp_path: Path) -> None:
    p = tmp_path / "box.toml"
    p.write_text("ram_gb = 31.5\n")
    hw = load_hardware_file(p)
    assert hw.devices == () and hw.kind == "cpu" and hw.ram_total == int(31.5 * GiB)
    assert hw.backends == ("CPU",)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("nokey.toml", 'cpu = "x"\n', "ram_gb: missing"),
        ("noname.toml", "ram_gb = 64\n[[gpu]]\nmemory_gb = 24\n", "gpu[0].name: missing"),
        ("bad.toml", "ram_gb = = 64\n[[gpu\n", "not valid TOML"),
        ("bad.json", '{"ram_gb": 64,', "cannot parse"),
        ("rocm.toml", 'ram_gb = 64\n[[gpu]]\nname = "AMD Radeon RX 7900 XTX"\nkind = "rocm"\n', "rocm"),
        ("ram.toml", 'ram_gb = "lots"\n', "ram_gb: expected a number, got str 'lots'"),
        ("list.json", "[1, 2]", "not a JSON object"),
        ("gpustr.toml", 'ram_gb = 64\ngpu = ["NVIDIA GeForce RTX 4090"]\n', "gpu[0]: expected a table"),
        ("binary.toml", b"\xff\xfe\x00ram_gb", "not UTF-8"),
        # every field checked once, naming the field (these were tracebacks or planned as if real)
        ("pcie0.toml", "ram_gb = 64\npcie_gbs = 0\n", "pcie_gbs: must be > 0, got 0"),
        ("pciestr.toml", 'ram_gb = 64\npcie_gbs = "fast"\n', "pcie_gbs: expected a number"),
        ("negram.toml", "ram_gb = -64\n", "ram_gb: must be > 0, got -64"),
        ("nanram.json", '{"ram_gb": NaN}', "ram_gb: must be a finite number"),
        ("bigram.toml", "ram_gb = 1e300\n", "ram_gb: must be ≤"),
        ("hugeint.json", '{"ram_gb": ' + "9" * 400 + "}", "ram_gb: must be ≤"),
        ("negcores.toml", "ram_gb = 64\ncores = -4\n", "cores: must be ≥ 1, got -4"),
        ("halfcore.toml", "ram_gb = 64\ncores = 2.5\n", "cores: must be a whole number"),
        ("boolram.json", '{"ram_gb": true}', "ram_gb: expected a number, got bool"),
        (
            "bw0.toml",
            'ram_gb = 64\n[[gpu]]\nname = "a"\nmemory_gb = 8\n[[gpu]]\nname = "b"\nmemory_gb = 8\n'
            "bandwidth_gbs = 0\n",
            "gpu[1].bandwidth_gbs: must be > 0, got 0",
        ),
        ("typo.toml", "ram_gb = 64\nram_gbs = 96\n", "ram_gbs: unknown key (known: name, cpu"),
        ("gputypo.toml", 'ram_gb = 64\n[[gpu]]\nname = "a"\nmemry_gb = 8\n', "gpu[0].memry_gb: unknown key"),
        ("free.toml", 'ram_gb = 64\n[[gpu]]\nname = "a"\nmemory_gb = 8\nfree_gb = 9\n', "free_gb: more than"),
        ("avail.toml", "ram_gb = 64\nram_available_gb = 65\n", "ram_available_gb: more than ram_gb"),
        ("nomem.toml", 'ram_gb = 64\n[[gpu]]\nname = "a"\n', "gpu[0].memory_gb: missing"),
        ("bigmac.toml", 'ram_gb = 64\n[[gpu]]\nname = "M4"\nkind = "metal"\nmemory_gb = 96\n', "≤ 64"),
        (
            "mixed.toml",
            'ram_gb = 64\n[[gpu]]\nname = "a"\nmemory_gb = 8\n[[gpu]]\nname = "M"\nkind = "metal"\n',
            "one kind",
        ),
        ("unified.toml", "ram_gb = 64\nunified = 1\n", "unified: expected true or false"),
        ("gputable.toml", 'ram_gb = 64\n[gpu]\nname = "a"\n', "gpu: expected a list"),
        ("name.json", '{"ram_gb": 8, "name": "two\\nlines"}', "name: must be one line"),
        ("deep.json", '{"ram_gb": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
        ("deep.toml", "ram_gb = " + "[" * 100000 + "]" * 100000 + "\n", "TOML"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith((".toml", ".json")) else "",
)
def test_load_bad_files(tmp_path: Path, name: str, text: str | bytes, says: str) -> None:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    with pytest.raises(InputError) as e:
        load_hardware_file(p)
    assert e.value.path == str(p)
    assert says in e.value.problem
    assert name in str(e.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such hardware file") as e:
        load_hardware_file(tmp_path / "nope.toml")
    assert e.value.path == str(tmp_path / "nope.toml")


def test_resolve_hardware(tmp_path: Path, bindir: Path) -> None:
    _no_gpu(resolve_hardware("auto"))
    assert resolve_hardware("rtx4090-64") is PROFILES["rtx4090-64"]
    p = tmp_path / "ws.toml"
    p.write_text(TWO_GPUS_TOML)
    assert len(resolve_hardware(str(p)).devices) == 2
    with pytest.raises(InputError, match="unknown hardware 'rtx9090'") as e:
        resolve_hardware("rtx9090")
    assert "mac-studio-m3-ultra-512" in str(e.value)  # lists the profiles
    with pytest.raises(InputError, match="no such hardware file"):
        resolve_hardware(str(tmp_path / "other.json"))


def test_resolve_hardware_names_where_the_spec_came_from() -> None:
    with pytest.raises(InputError, match=r"^Q35_HARDWARE: unknown hardware 'rtx9090'"):
        resolve_hardware("rtx9090", origin="Q35_HARDWARE")


def test_usable_ram_is_never_negative() -> None:
    """A 1 GiB machine's OS reserve (4 GiB) was planned as "-3.0 GiB available"."""
    small = replace(PROFILES["cpu-desktop-64"], ram_total=GiB, ram_available=None)
    assert small.usable_ram() == 0


def test_fifo_hardware_file_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "hw.toml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):  # reading it would wait for a writer
        load_hardware_file(fifo)


def test_resolve_hardware_directory_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        resolve_hardware(str(tmp_path))
    assert e.value.path == str(tmp_path)


@pytest.mark.parametrize("name", list(PROFILES))
def test_profiles(name: str) -> None:
    hw = PROFILES[name]
    assert hw.name == name
    assert hw.ram_total > 0 and hw.ram_bandwidth_gbs
    assert all(d.total_bytes > 0 for d in hw.devices)
    assert all(d.bandwidth_gbs for d in hw.devices), "every profile GPU is in the bandwidth table"
    assert hw.usable_ram() > 0
    if name.startswith("mac"):
        assert hw.unified and hw.kind == "metal"
        assert hw.devices and all(d.kind == "metal" for d in hw.devices)
        assert all(d.total_bytes == metal_default_cap(hw.ram_total) < hw.ram_total for d in hw.devices)
        assert "Metal" in hw.backends
    else:
        assert not hw.unified
        assert all(d.kind == "cuda" for d in hw.devices)
        assert [d.index for d in hw.devices] == list(range(len(hw.devices)))


def test_profile_counts() -> None:
    assert len(PROFILES["8xh100-2048"].devices) == 8
    assert len(PROFILES["2x5090-256"].devices) == 2
    assert PROFILES["cpu-epyc-768"].kind == "cpu"
    assert PROFILES["mac-studio-m3-ultra-512"].devices[0].bandwidth_gbs == 819


def test_disk_free_and_read_speed_where_the_model_lies(tmp_path: Path) -> None:
    from q35local.machine.probe import disk_read_speed, probe

    big = tmp_path / "model.gguf"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * 600)  # 600 MiB, real blocks on disk
    hw = probe(big)
    assert hw.disk_free is not None and hw.disk_free > 0
    speed = disk_read_speed(big)  # what `q35 fit` measures when the model would page from disk
    assert speed is not None and speed > 0
    small = tmp_path / "small.gguf"
    small.write_bytes(b"x" * 1000)
    assert disk_read_speed(small) is None
