"""Build the NEON kernels (kernels/*.c) as the cffi extension `edge._kernels`.

Native NEON on aarch64; on x86 the same intrinsics compile through SIMDe (libsimde-dev), so CI
runs the ARM code paths. Optional by design: without cffi, a C compiler or SIMDe the runtime
falls back to numpy and `edge.backends.kernels.describe()` says why.

    python -m kernels.build                      # in place: edge/_kernels.<abi>.so
    python -m kernels.build --cross aarch64      # cross-compile for aarch64 CPython (needs the
        --python-include DIR --out DIR           #   arm64 Python headers)
    python -m kernels.build --armroot            # ... for tools/emu/armroot.py's emulated board, into edge/
    python -m kernels.build --check              # print why a build would be skipped, if it would

`setup.py` calls `setup_kwargs()`: the extension is built by `pip install -e .` when it can be.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODULE = "edge._kernels"
SOURCES = ["cpu.c", "gemm_s8.c", "gemm_s8_dot.c", "fsmn.c", "cif.c", "norm.c", "attention.c", "fbank.c",
           "ref_scalar.c"]
SIMDE_HEADER = "/usr/include/simde/arm/neon.h"
# no FMA contraction: FSMN/CIF stay bit-exact with numpy and x86 (SIMDe) equals aarch64
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-std=gnu11"]
CROSS = {"aarch64": {"cc": "aarch64-linux-gnu-gcc", "flags": ["-march=armv8-a"], "abi": "aarch64-linux-gnu"}}


def cdef() -> str:
    """The declarations between cdef-begin/cdef-end in paraedge_kernels.h (cffi cannot preprocess)."""
    with open(os.path.join(HERE, "paraedge_kernels.h"), encoding="utf-8") as f:
        text = f.read()
    return text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]


def is_arm(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("aarch64", "arm64")


def host_flags() -> list[str]:
    """aarch64: baseline ARMv8.0 (sdot is enabled per file and picked at run time). x86: SIMDe,
    with the host's own vector ISA when the compiler accepts -march=native (the extension is
    built where it runs; PARAEDGE_PORTABLE=1 turns that off)."""
    if is_arm():
        return COMMON_FLAGS
    if os.environ.get("PARAEDGE_PORTABLE") != "1" and _compiler_accepts(["-march=native"]):
        return COMMON_FLAGS + ["-march=native"]
    return COMMON_FLAGS


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = cc.split()[0]
    return shutil.which(exe)


def _compiler_accepts(flags: list[str]) -> bool:
    cc = _compiler()
    if not cc:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("int main(void){return 0;}\n")
        r = subprocess.run([cc, *flags, "-c", src, "-o", os.path.join(d, "t.o")], capture_output=True)
        return r.returncode == 0


def why_not() -> str | None:
    """None when a host build can work, else the one-line reason it is skipped."""
    if os.environ.get("PARAEDGE_NO_EXTENSION") == "1":  # `paraedge deploy`: a pure wheel, the board's build added after
        return "PARAEDGE_NO_EXTENSION=1"
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed (pip install cffi)"
    if not _compiler():
        return "no C compiler (apt-get install gcc)"
    if not is_arm() and not os.path.exists(SIMDE_HEADER):
        return f"no SIMDe for NEON on {platform.machine()} (apt-get install libsimde-dev)"
    return None


def ffibuilder(flags: list[str] | None = None, relative: bool = False):
    """The cffi builder; `relative` names the sources relative to the repository root (setup.py)."""
    import cffi

    where = (lambda p: os.path.relpath(p, ROOT)) if relative else (lambda p: p)
    ffi = cffi.FFI()
    ffi.cdef(cdef())
    ffi.set_source(
        MODULE,
        '#include "paraedge_kernels.h"',
        sources=[where(os.path.join(HERE, s)) for s in SOURCES],
        include_dirs=[where(HERE)],
        extra_compile_args=host_flags() if flags is None else flags,
        libraries=["m"],
    )
    return ffi


def build_inplace(verbose: bool = False) -> str:
    """Compile edge/_kernels*.so next to edge/backends/kernels.py; returns its path."""
    reason = why_not()
    if reason:
        raise RuntimeError(reason)
    tmp = os.path.join(ROOT, "build", "kernels")
    os.makedirs(tmp, exist_ok=True)
    so = ffibuilder().compile(tmpdir=tmp, verbose=verbose)
    dest = os.path.join(ROOT, "edge", os.path.basename(so))
    shutil.copyfile(so, dest)
    return dest


def build_cross(arch: str, python_include: str, out: str, ext_suffix: str | None = None) -> str:
    """Cross-compile the extension for `arch` CPython: cffi emits the C, the cross gcc builds it
    against that Python's headers (e.g. the arm64 libpython3.11-dev unpacked by tools/emu/armroot.py)."""
    spec = CROSS[arch]
    os.makedirs(out, exist_ok=True)
    c_file = os.path.join(out, "_kernels.c")
    with contextlib.redirect_stdout(io.StringIO()):  # cffi chats about "generating ..."
        ffibuilder(flags=[]).emit_c_code(c_file)
    suffix = ext_suffix or f".cpython-{sys.version_info.major}{sys.version_info.minor}-{spec['abi']}.so"
    so = os.path.join(out, "_kernels" + suffix)
    cmd = [spec["cc"], *COMMON_FLAGS, *spec["flags"], "-shared", "-fPIC", "-I", python_include,
           "-I", os.path.dirname(python_include), "-I", HERE,
           c_file, *[os.path.join(HERE, s) for s in SOURCES], "-lm", "-o", so]
    subprocess.run(cmd, check=True)
    return so


def armroot_deps(root: str, out: str = os.path.join(ROOT, "out", "kernels-a64-py")) -> tuple[str, str]:
    """What the extension needs for tools/emu/armroot.py's aarch64 CPython, cached under `out`: that
    Python's headers (Debian's arm64 libpython3.11-dev, fetched with the armroot's private arm64
    apt state: no second root) and an aarch64 cffi wheel (the extension's runtime half).
    Returns (include dir, site dir for PYTHONPATH)."""
    inc, site = os.path.join(out, "usr", "include"), os.path.join(out, "site")
    stamp = os.path.join(out, ".ok")
    if os.path.exists(stamp):
        return inc, site
    os.makedirs(os.path.join(out, "cache", "archives", "partial"), exist_ok=True)
    apt = os.path.join(root, ".apt")
    opts = ["-o", f"Dir::State={apt}/state", "-o", f"Dir::State::status={apt}/state/status",
            "-o", f"Dir::Cache={out}/cache", "-o", f"Dir::Etc::SourceList={apt}/etc/sources.list",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures=arm64", "-o", "Debug::NoLocking=1"]
    subprocess.run(["apt-get", *opts, "download", "libpython3.11-dev"], cwd=out, check=True, capture_output=True)
    for deb in [f for f in os.listdir(out) if f.endswith(".deb")]:
        subprocess.run(["dpkg", "-x", os.path.join(out, deb), out], check=True)
        os.remove(os.path.join(out, deb))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", site,
                    "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--platform",
                    "manylinux2014_aarch64", "--no-deps", "cffi>=1.15", "pycparser"], check=True)
    open(stamp, "w").close()
    return inc, site


def build_for_armroot(root: str) -> tuple[str, str]:
    """Cross-build edge/_kernels.cpython-311-aarch64-linux-gnu.so (beside the host's build: each
    interpreter loads its own ABI tag) for the armroot's Python; returns (.so, site dir to add)."""
    inc, site = armroot_deps(root)
    so = build_cross("aarch64", os.path.join(inc, "python3.11"), os.path.join(ROOT, "build", "kernels-a64"),
                     ext_suffix=".cpython-311-aarch64-linux-gnu.so")
    dest = os.path.join(ROOT, "edge", os.path.basename(so))
    shutil.copyfile(so, dest)
    return dest, site


def setup_kwargs() -> dict:
    """For setup.py: the cffi extension plus a build_ext that skips it (with a warning) when it
    cannot be built, so `pip install` never fails because of the optional kernels."""
    reason = why_not()
    if reason:
        print(f"paraedge: NEON kernels skipped: {reason}", file=sys.stderr)
        return {}
    from setuptools.command.build_ext import build_ext

    class OptionalBuildExt(build_ext):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # a compiler error must not fail the install
                print(f"paraedge: NEON kernels skipped: {exc}", file=sys.stderr)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                print(f"paraedge: NEON kernels skipped: {exc}", file=sys.stderr)

    ext = ffibuilder(relative=True).distutils_extension(tmpdir=os.path.join("build", "kernels"))
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.build", description=__doc__.splitlines()[0])
    ap.add_argument("--cross", choices=sorted(CROSS), help="cross-compile for this architecture")
    ap.add_argument("--python-include", help="--cross: the target CPython's include dir (Python.h)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "kernels"), help="--cross: output dir")
    ap.add_argument("--check", action="store_true", help="only say whether a host build would work")
    ap.add_argument("--armroot", action="store_true", help="cross-build into edge/ for tools/emu/armroot.py's aarch64 Python")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        reason = why_not()
        print(reason or "ok: the host build can work")
        return 1 if reason else 0
    if args.armroot:
        from paraedge_tools.emu import armroot

        print(build_for_armroot(armroot.build_root())[0])
        return 0
    if args.cross:
        if not args.python_include:
            ap.error("--cross needs --python-include (the target CPython's Python.h directory)")
        print(build_cross(args.cross, args.python_include, args.out))
        return 0
    try:
        print(build_inplace(args.verbose))
    except RuntimeError as exc:
        print(f"kernels.build: skipped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
