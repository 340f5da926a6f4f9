"""Dynamic aarch64 instruction counts under qemu-user: a repeatable ARM cost figure on an x86 host.

Debian ships qemu-user without TCG plugins, so `plugin()` builds ours (tools/emu/qemu/insn_count.c,
an inline per-block counter) once, against the qemu-plugin.h of the installed qemu's own Debian
source (fetched with apt-get source --download-only through a private deb-src list; only the
header is unpacked). Everything is cached under out/qemu/. Counts are identical run to run, so a
kernel's cost is count(with the kernel) - count(same program without it).

    python -m paraedge_tools.emu.qemu_insn -- ./prog args      # print the instruction count of one run
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from paraedge_tools import out_dir

CACHE = out_dir("qemu")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu", "insn_count.c")
SYSROOT = "/usr/aarch64-linux-gnu"  # gcc-aarch64-linux-gnu's libc, for dynamically linked programs


class QemuInsnError(RuntimeError):
    pass


def qemu() -> str:
    exe = shutil.which("qemu-aarch64")
    if not exe:
        raise QemuInsnError("qemu-aarch64 not found (apt-get install qemu-user; `make apt` does); "
                            "the -static build cannot load plugins")
    return exe


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise QemuInsnError(f"{' '.join(cmd[:4])}...: exit {r.returncode}: {(r.stderr or r.stdout)[-800:]}")
    return r


def _apt(cache: str, *args: str) -> list[str]:
    """apt-get with a private deb-src list and state, so the host's apt setup is untouched."""
    return ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={cache}/apt/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={cache}/apt/lists", "-o", "APT::Get::List-Cleanup=0", *args]


def _deb_src_lines() -> list[str]:
    """deb-src lines for the host's own Debian mirrors and suites."""
    lines = []
    for path in glob.glob("/etc/apt/sources.list.d/*.sources"):
        uris = suites = None
        for line in open(path, encoding="utf-8", errors="replace"):
            key, _, val = line.partition(":")
            if key.strip() == "URIs":
                uris = val.split()
            elif key.strip() == "Suites":
                suites = val.split()
            elif not line.strip() and uris and suites:
                lines += [f"deb-src {u} {s} main" for u in uris for s in suites]
                uris = suites = None
        if uris and suites:
            lines += [f"deb-src {u} {s} main" for u in uris for s in suites]
    if os.path.exists("/etc/apt/sources.list"):
        for line in open("/etc/apt/sources.list", encoding="utf-8", errors="replace"):
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                lines.append("deb-src " + " ".join(p for p in parts[1:] if not p.startswith("[")))
    return sorted(set(lines)) or ["deb-src http://deb.debian.org/debian bookworm main"]


def plugin_header(cache: str = CACHE) -> str:
    """The directory holding qemu-plugin.h from the installed qemu's Debian source."""
    found = glob.glob(os.path.join(cache, "src", "qemu-*", "include", "qemu", "qemu-plugin.h"))
    if found:
        return os.path.dirname(found[0])
    os.makedirs(os.path.join(cache, "apt", "lists", "partial"), exist_ok=True)
    src = os.path.join(cache, "src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(cache, "apt", "sources.list"), "w") as f:
        f.write("\n".join(_deb_src_lines()) + "\n")
    _run(_apt(cache, "update"))
    version = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"], capture_output=True,
                             text=True).stdout.strip()
    try:
        _run(_apt(cache, "source", "--download-only", f"qemu={version}" if version else "qemu"), cwd=src)
    except QemuInsnError:
        _run(_apt(cache, "source", "--download-only", "qemu"), cwd=src)  # the suite moved on: nearest version
    tarballs = glob.glob(os.path.join(src, "qemu_*.orig.tar.*"))
    if not tarballs:
        raise QemuInsnError("apt-get source qemu fetched no .orig tarball")
    with tarfile.open(tarballs[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith("include/qemu/qemu-plugin.h")]
        if not members:
            raise QemuInsnError(f"{tarballs[0]} has no include/qemu/qemu-plugin.h")
        tar.extractall(src, members=members)
    for f in glob.glob(os.path.join(src, "*.tar.*")) + glob.glob(os.path.join(src, "*.dsc")):
        os.remove(f)  # only the header is kept
    return plugin_header(cache)


def plugin(cache: str = CACHE) -> str:
    """Path of the insn-count plugin (built on first use, rebuilt when its source changes)."""
    so = os.path.join(cache, "libinsn_count.so")
    if os.path.exists(so) and os.path.getmtime(so) >= os.path.getmtime(SOURCE):
        return so
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not cc:
        raise QemuInsnError("no C compiler to build the qemu plugin")
    inc = plugin_header(cache)
    _run([cc, "-O2", "-shared", "-fPIC", "-I", inc, SOURCE, "-o", so + ".tmp"])
    os.replace(so + ".tmp", so)
    return so


def plugin_args(out_file: str, cache: str = CACHE) -> list[str]:
    """The qemu arguments that load the counter, writing the total to out_file."""
    return ["-plugin", f"{plugin(cache)},out={out_file}"]


def count_insns(cmd: list[str], cpu: str = "cortex-a76", sysroot: str | None = SYSROOT, env=None, cwd=None,
                timeout: float = 600, wrap=None) -> int:
    """Executed aarch64 instructions of one run of `cmd` (an aarch64 program and its arguments)
    under qemu-aarch64 -cpu CPU. `wrap(plugin_args) -> argv` replaces the qemu command line for
    programs that need their own (paraedge_tools.emu.armroot.command for the aarch64 Python)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "count")
        args = plugin_args(out)
        if wrap is not None:
            argv = wrap(args)
        else:
            argv = [qemu(), "-cpu", cpu, *(["-L", sysroot] if sysroot else []), *args, *cmd]
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
        if r.returncode:
            raise QemuInsnError(f"{' '.join(cmd[:3])}: exit {r.returncode} under qemu -cpu {cpu}: {r.stderr[-800:]}")
        with open(out) as f:
            return int(f.read().strip())


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cpu = "cortex-a76"
    if args[:1] == ["--cpu"]:
        cpu, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m paraedge_tools.emu.qemu_insn [--cpu CPU] -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    print(count_insns(args, cpu=cpu))
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main, (QemuInsnError,))
