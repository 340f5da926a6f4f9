"""An emulated aarch64 board on an x86 host: a private aarch64 CPython root run under qemu-user.

`build_root()` assembles it once (cached under out/armroot, ~1 min on first use):
- Debian arm64 python3.11 and its library closure, fetched by apt-get --download-only into a
  private apt state (the host's package lists are untouched) and unpacked with dpkg -x;
- aarch64 wheels (numpy, scipy, onnxruntime, kaldi-native-fbank, PyYAML, the TVM runtime)
  installed by the host's pip into ROOT/site; the 260 MB TVM compiler library is deleted, as a
  device install must not carry it (the backend imports with TVM_USE_RUNTIME_LIB=1);
- ROOT/proc/cpuinfo in ARM format (qemu -L serves it; onnxruntime segfaults on import without).

`run_python(code_or_args, ...)` runs ROOT's python3.11 under `qemu-aarch64 -cpu cortex-a76 -L ROOT`
with this repo on PYTHONPATH, so ParaEdge's own runtime runs as on a board. Float math is
160-340x slower than native: keep emulated inputs short. With other emulated processes running
beside it, a guest sometimes dies of SIGSEGV at exit, after all its output (seen alike with the
tvm and onnxruntime backends, after ~270 decodes, and never with one emulated process at a time
in 5 runs): the tests run their emulated processes one at a time.

    python -m paraedge_tools.emu.armroot build                # build (or reuse) the root, print its path
    python -m paraedge_tools.emu.armroot run -- -c "import edge; print(edge)"
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys

from paraedge_tools import CHECKOUT, out_dir

# the emulated python imports edge/ from the checkout (an installed edge sits beside x86 wheels);
# a kit is installed into it instead (tools/deploy.py)
REPO = CHECKOUT or os.getcwd()
DEFAULT_ROOT = out_dir("armroot")
PY = "3.11"
DEBS = [f"python{PY}", f"libpython{PY}-stdlib", "libstdc++6", "libgcc-s1", "libgomp1", "zlib1g", "libffi8",
        "libbz2-1.0", "liblzma5", "libssl3", "libexpat1", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6",
        "libreadline8", "libgfortran5", "libopenblas0-pthread"]
WHEELS = ["numpy==1.26.4", "scipy==1.17.1", "onnxruntime==1.32.0", "kaldi-native-fbank", "PyYAML",
          "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "ml_dtypes==0.5.4", "typing_extensions"]
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
STAMP = ".paraedge-armroot-v1"
CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
    "cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n" for i in range(4))


class ArmRootError(RuntimeError):
    pass


def qemu() -> str:
    exe = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if not exe:
        raise ArmRootError("qemu-aarch64 not found: apt-get install qemu-user (make apt does)")
    return exe


def _apt_sources() -> str:
    """The host's Debian mirrors and suites, as arm64 one-line sources."""
    lines = []
    for path in glob.glob("/etc/apt/sources.list.d/*.sources") + ["/etc/apt/sources.list"]:
        if not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8").read()
        if path.endswith(".sources"):
            for stanza in text.split("\n\n"):
                f = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith("#"):
                        k, v = line.split(":", 1)
                        f[k.strip()] = v.strip()
                if "debian" in f.get("URIs", "") and f.get("Types", "deb") == "deb":
                    for suite in f.get("Suites", "").split():
                        lines.append(f"deb [arch=arm64 trusted=yes] {f['URIs']} {suite} {f.get('Components', 'main')}")
        else:
            for line in text.splitlines():
                parts = line.split()
                if parts[:1] == ["deb"] and "debian" in line and "[" not in line:
                    lines.append(f"deb [arch=arm64 trusted=yes] {' '.join(parts[1:])}")
    if not lines:
        lines = ["deb [arch=arm64 trusted=yes] http://deb.debian.org/debian bookworm main"]
    return "\n".join(lines) + "\n"


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise ArmRootError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}")
    return r


def arm64_apt(apt: str, log) -> list[str]:
    """apt-get options for a private arm64 apt state under `apt` (the host's lists are untouched);
    `apt-get update` runs the first time only."""
    for d in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
        os.makedirs(os.path.join(apt, d), exist_ok=True)
    if not os.path.exists(os.path.join(apt, "state", "status")):
        open(os.path.join(apt, "state", "status"), "w").close()
    with open(os.path.join(apt, "etc", "sources.list"), "w") as f:
        f.write(_apt_sources())
    opts = ["-o", f"Dir::State={apt}/state", "-o", f"Dir::State::status={apt}/state/status",
            "-o", f"Dir::Cache={apt}/cache", "-o", f"Dir::Etc::SourceList={apt}/etc/sources.list",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::Etc::Preferences={apt}/etc/preferences",
            "-o", f"Dir::Etc::PreferencesParts={apt}/etc/preferences.d", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures=arm64", "-o", "Acquire::Languages=none", "-o", "Debug::NoLocking=1",
            "-o", "APT::Get::AllowUnauthenticated=true", "-o", "Acquire::AllowInsecureRepositories=true"]
    if not glob.glob(os.path.join(apt, "state", "lists", "*Packages*")):
        log("armroot: apt-get update (arm64, private state)")
        _run(["apt-get", *opts, "update", "-qq"])
    return opts


def fetch_debs(packages: list[str], dest: str, apt: str, log, with_deps: bool = True) -> int:
    """Download Debian arm64 `packages` (and, with_deps, their dependency closure) and unpack them
    into `dest` with dpkg -x; returns how many were unpacked."""
    opts = arm64_apt(apt, log)
    archives = os.path.join(apt, "cache", "archives")
    for deb in glob.glob(os.path.join(archives, "*.deb")):
        os.remove(deb)
    if with_deps:
        _run(["apt-get", *opts, "install", "-y", "-qq", "--download-only", "--no-install-recommends", *packages],
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    else:
        _run(["apt-get", *opts, "download", *packages], cwd=archives)
    debs = glob.glob(os.path.join(archives, "*.deb"))
    os.makedirs(dest, exist_ok=True)
    for deb in debs:
        _run(["dpkg", "-x", deb, dest])
        os.remove(deb)
    return len(debs)


def _fetch_debs(root: str, log) -> None:
    log("armroot: downloading arm64 python3.11 and its libraries")
    n = fetch_debs(DEBS, root, os.path.join(root, ".apt"), log)
    log(f"armroot: unpacked {n} packages")


def _install_wheels(root: str, log) -> None:
    site = os.path.join(root, "site")
    log("armroot: installing aarch64 wheels")
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--target", site,
          "--only-binary=:all:", "--python-version", PY, "--implementation", "cp", *plats, "--no-deps", *WHEELS],
         env=dict(os.environ, PIP_CONSTRAINT=""))
    for lib in glob.glob(os.path.join(site, "tvm", "lib", "libtvm_compiler*")):
        os.remove(lib)  # a device carries the runtime only


def _ldconfig_links(root: str) -> None:
    """dpkg -x does not run ldconfig: add the soname links the packages' libraries expect."""
    for d in ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"):
        full = os.path.join(root, d)
        if not os.path.isdir(full):
            continue
        for name in os.listdir(full):
            if ".so." in name:
                parts = name.split(".so.")
                soname = parts[0] + ".so." + parts[1].split(".")[0]
                link = os.path.join(full, soname)
                if not os.path.exists(link):
                    os.symlink(name, link)
    alt = os.path.join(root, "usr/lib/aarch64-linux-gnu/openblas-pthread")
    if os.path.isdir(alt):  # libblas.so.3 / liblapack.so.3 are Debian alternatives
        for name in os.listdir(alt):
            link = os.path.join(root, "usr/lib/aarch64-linux-gnu", name)
            if not os.path.exists(link):
                os.symlink(os.path.join("openblas-pthread", name), link)


def build_root(root: str = DEFAULT_ROOT, log=None) -> str:
    """The aarch64 Python root (built once, then reused); returns its path."""
    log = log or (lambda m: print(m, file=sys.stderr))
    if os.path.isfile(os.path.join(root, STAMP)):
        return root
    qemu()
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    _fetch_debs(root, log)
    _ldconfig_links(root)
    _install_wheels(root, log)
    os.makedirs(os.path.join(root, "proc"), exist_ok=True)
    with open(os.path.join(root, "proc", "cpuinfo"), "w") as f:
        f.write(CPUINFO)
    shutil.rmtree(os.path.join(root, ".apt", "cache"), ignore_errors=True)
    r = run_python(["-c", "import numpy, scipy, onnxruntime, yaml, kaldi_native_fbank; print('ok')"], root=root)
    if r.returncode or "ok" not in r.stdout:
        raise ArmRootError(f"armroot: the aarch64 python cannot import the runtime: {r.stderr[-1500:]}")
    open(os.path.join(root, STAMP), "w").close()
    log(f"armroot: ready at {root}")
    return root


def env_for(root: str, extra_path: list[str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "site"), REPO] + list(extra_path or []))
    env["PYTHONNOUSERSITE"] = "1"
    env["TVM_USE_RUNTIME_LIB"] = "1"
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env


def command(args: list[str], root: str = DEFAULT_ROOT, cpu: str = "cortex-a76", plugin: list[str] | None = None) -> list[str]:
    """The argv that runs ROOT's python with `args` under qemu (plugin: extra qemu args, e.g. -plugin)."""
    return [qemu(), "-cpu", cpu, "-L", root, *(plugin or []), os.path.join(root, "usr", "bin", f"python{PY}"), *args]


def run_python(args, root: str = DEFAULT_ROOT, cpu: str = "cortex-a76", timeout: float | None = 600,
               plugin: list[str] | None = None, cwd: str = REPO, extra_path=None) -> subprocess.CompletedProcess:
    """Run ROOT's python3.11 (args: a list of argv, or a code string) under qemu-aarch64."""
    if isinstance(args, str):
        args = ["-c", args]
    return subprocess.run(command(args, root, cpu, plugin), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env_for(root, extra_path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paraedge_tools.emu.armroot", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["build", "run", "path"])
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (a board profile's qemu_cpu)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="run: arguments for the aarch64 python (after --)")
    a = ap.parse_args(argv)
    if a.action == "path":
        print(a.root)
        return 0
    root = build_root(a.root)
    if a.action == "build":
        print(root)
        return 0
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    return subprocess.call(command(args, root, a.cpu), env=env_for(root), cwd=REPO)


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main, (ArmRootError,))
