"""`paraedge deploy`: a self-contained install kit for one board, written on the host.

    paraedge deploy --board raspberry-pi-5 --model models/demo -o kit-pi5
    scp -r kit-pi5 pi@car:  &&  ssh pi@car 'sudo kit-pi5/install.sh --enable-service'

The kit (a folder; kit.json lists every file with its sha256):
- `model/`: the TVM bundle for the board (compiled, or reused from the bundle cache while the
  model, board profile, TVM version and options are unchanged), or the model dir's ONNX files
  when the board runs onnxruntime (`[runtime] backend` in its profile, or --backend);
- `paraedge-*.whl`: this ParaEdge, with the NEON cffi extension cross-built for aarch64 boards
  (against the board Python's headers from Debian's arm64 libpythonX.Y-dev);
- `wheels/`: every runtime dependency for the board's platform and Python, so the board installs
  offline (cars often are). The TVM runtime wheel is repacked without the 240 MB compiler library;
- `edge.toml` (the board's threads, audio device, backend), `paraedge.service`, `install.sh`.

`install.sh` makes a venv on the board, installs from the kit alone (pip --no-index), copies
the model and config under its prefix, runs `paraedge doctor` and, with --enable-service,
installs and starts the systemd unit.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from edge import __version__
from edge.asr.modeldir import MODEL_FILES, ModelDir, model_hash, sha256_file
from edge.assets import resource
from edge.boards import Board, load_board
from edge.errors import ParaEdgeError
from paraedge_tools import CHECKOUT, out_dir
from paraedge_tools.output import OutputDir, digests

KIT_FORMAT = "paraedge-kit/1"
BACKENDS = ("tvm", "onnxruntime")
DEFAULT_PYTHON = "3.11"  # Debian 12 / Raspberry Pi OS bookworm; a profile's [runtime] python overrides
# manylinux levels a board with glibc >= 2.35 (Debian 12, Ubuntu 22.04 / JetPack 6) runs; newest first
GLIBC_LEVELS = ("2_35", "2_34", "2_31", "2_28", "2_27", "2_24", "2_17")
ONNX_FILES = ("model_quant.onnx", "decoder_quant.onnx", "model.onnx", "decoder.onnx", "tokens.txt")
TVM_DISTS = ("apache-tvm", "apache-tvm-ffi")  # the board's runtime: the same versions that compiled the bundle


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise ParaEdgeError(f"{what} failed: {' / '.join(tail)}")
    return r


def board_python(board: Board, override: str | None) -> str:
    py = override or str((board.raw.get("runtime") or {}).get("python", DEFAULT_PYTHON))
    parts = py.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise ParaEdgeError(f"--python {py}: expected a CPython version such as 3.11")
    return py


def board_backend(board: Board, override: str | None) -> str:
    backend = override or str((board.raw.get("runtime") or {}).get("backend", "tvm"))
    if backend not in BACKENDS:
        raise ParaEdgeError(f"{board.path}: [runtime] backend '{backend}' is not one of {', '.join(BACKENDS)}")
    return backend


def pip_platform_args(board: Board, py: str) -> list[str]:
    arch = board.arch
    plats = [f"manylinux_{g}_{arch}" for g in GLIBC_LEVELS] + [f"manylinux2014_{arch}"]
    tag = "cp" + py.replace(".", "")
    return ["--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", tag, "--abi", "abi3", "--abi", "none", *[a for p in plats for a in ("--platform", p)]]


# -- the model --------------------------------------------------------------------------------
def bundle_key(md: ModelDir, board: Board, int8: bool) -> str:
    """What decides a bundle's bytes: model, board profile, TVM version, bundle format, options."""
    from edge.backends.tvm import BUNDLE_FORMAT

    tvm_version = metadata.version("apache-tvm")
    key = json.dumps({"model": model_hash(md), "board": sha256_file(board.path), "tvm": tvm_version,
                      "format": BUNDLE_FORMAT, "int8": int8}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cached_bundle(md: ModelDir, board: Board, int8: bool, log) -> str:
    """The board's bundle from the cache (out/bundles) when up to date, else compiled into it."""
    from edge.backends.tvm import read_manifest
    from paraedge_tools.compiler.compile import compile_bundle

    path = out_dir("bundles", f"{board.name}-{'int8' if int8 else 'fp32'}-{bundle_key(md, board, int8)}")
    try:
        read_manifest(path)
        log(f"deploy: reusing the up-to-date bundle {path}")
        return path
    except ParaEdgeError:
        pass
    log(f"deploy: compiling the {board.name} bundle into {path}")
    compile_bundle(md.path, board, path, int8=int8, log=log)
    return path


def copy_model(md: ModelDir, board: Board, backend: str, int8: bool, bundle: str | None, dest: str, log) -> dict:
    if backend == "tvm":
        from edge.backends.tvm import read_manifest

        src = bundle or cached_bundle(md, board, int8, log)
        manifest = read_manifest(src)
        if (manifest.get("board") or {}).get("name") != board.name:
            raise ParaEdgeError(f"{src}: a bundle for board '{(manifest.get('board') or {}).get('name')}', not {board.name}")
        if manifest["model"].get("hash") != model_hash(md):
            raise ParaEdgeError(f"{src}: compiled from another model than {md.path}; recompile or drop --bundle")
        shutil.copytree(src, dest)
        return {"kind": "tvm-bundle", "int8": manifest["model"]["int8"], "functions": len(manifest["functions"])}
    names = [n for n in MODEL_FILES + ONNX_FILES if md.has(n)]
    pair = ("model_quant.onnx", "decoder_quant.onnx") if int8 else ("model.onnx", "decoder.onnx")
    if not all(md.has(n) for n in pair):
        raise ParaEdgeError(f"{md.path}: has no {' + '.join(pair)}; run `paraedge export {md.path}` first")
    os.makedirs(dest)
    for name in names:
        shutil.copy(md.file(name), os.path.join(dest, name))
    return {"kind": "onnx", "int8": int8}


# -- the wheel --------------------------------------------------------------------------------
def _load_kernel_build(source: str):
    spec = importlib.util.spec_from_file_location("paraedge_kernel_build", os.path.join(source, "kernels", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cross_kernels(source: str, py: str, work: str, log) -> tuple[str | None, str]:
    """The NEON extension for the board's aarch64 CPython, or (None, why not)."""
    from paraedge_tools.emu.armroot import ArmRootError, fetch_debs

    headers = out_dir("pyheaders", f"arm64-{py}")
    inc = os.path.join(headers, "usr", "include", f"python{py}")
    if not os.path.isfile(os.path.join(inc, "Python.h")):
        log(f"deploy: fetching Debian's arm64 libpython{py}-dev (the board Python's headers)")
        try:
            fetch_debs([f"libpython{py}-dev"], headers, out_dir("apt-arm64"), log, with_deps=False)
        except ArmRootError as exc:
            return None, f"no arm64 headers for Python {py} from Debian ({str(exc)[:160]})"
    build = _load_kernel_build(source)
    if not shutil.which(build.CROSS["aarch64"]["cc"]):
        return None, f"no cross compiler {build.CROSS['aarch64']['cc']} (apt-get install gcc-aarch64-linux-gnu)"
    tag = py.replace(".", "")
    try:
        so = build.build_cross("aarch64", inc, os.path.join(work, "kernels"), ext_suffix=f".cpython-{tag}-aarch64-linux-gnu.so")
    except (subprocess.CalledProcessError, OSError) as exc:
        return None, f"cross build failed ({exc})"
    return so, ""


def _repack(whl: str, dest: str, edit) -> str:
    """Unpack a wheel, let `edit(folder)` change it, pack it again into dest (RECORD rewritten)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "wheel", "unpack", "-d", tmp, whl], "wheel unpack")
        (root,) = glob.glob(os.path.join(tmp, "*"))
        edit(root)
        os.makedirs(dest, exist_ok=True)
        before = set(os.listdir(dest))
        _run([sys.executable, "-m", "wheel", "pack", "-d", dest, root], "wheel pack")
        (new,) = set(os.listdir(dest)) - before or {os.path.basename(whl)}
    return os.path.join(dest, new)


def board_wheel(source: str, board: Board, py: str, dest: str, log) -> tuple[str, str]:
    """ParaEdge's wheel for the board: pure Python, plus the cross-built NEON kernels on aarch64."""
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, PARAEDGE_NO_EXTENSION="1")
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, source], f"building the wheel from {source}",
             env=env)
        (whl,) = glob.glob(os.path.join(work, "paraedge-*.whl"))
        if board.arch != "aarch64":
            shutil.copy(whl, dest)
            return os.path.join(dest, os.path.basename(whl)), "no NEON kernels (not an ARM board)"
        so, why = cross_kernels(source, py, work, log)
        if not so:
            shutil.copy(whl, dest)
            log(f"deploy: the wheel carries no NEON kernels: {why}")
            return os.path.join(dest, os.path.basename(whl)), why
        tag = "cp" + py.replace(".", "")

        def add_kernels(root: str) -> None:
            shutil.copy(so, os.path.join(root, "edge", os.path.basename(so)))
            (wheel_file,) = glob.glob(os.path.join(root, "*.dist-info", "WHEEL"))
            lines = [ln for ln in open(wheel_file, encoding="utf-8").read().splitlines()
                     if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
            lines += ["Root-Is-Purelib: false", f"Tag: {tag}-{tag}-linux_aarch64"]
            with open(wheel_file, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

        return _repack(whl, dest, add_kernels), "NEON kernels cross-built for aarch64"


def runtime_requirements(whl: str) -> list[str]:
    """The wheel's own Requires-Dist, without extras (the host, test and cuda extras stay home)."""
    import zipfile

    with zipfile.ZipFile(whl) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    reqs = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def strip_tvm_compiler(wheels: str) -> None:
    """The board needs libtvm_runtime, not the 240 MB compiler or its C++ headers: repack TVM's wheel."""
    for whl in glob.glob(os.path.join(wheels, "apache_tvm-*.whl")):
        def drop(root: str) -> None:
            for lib in glob.glob(os.path.join(root, "tvm", "lib", "libtvm_compiler*")):
                os.remove(lib)
            shutil.rmtree(os.path.join(root, "tvm", "3rdparty"), ignore_errors=True)

        with tempfile.TemporaryDirectory() as tmp:
            new = _repack(whl, tmp, drop)
            os.remove(whl)
            shutil.move(new, os.path.join(wheels, os.path.basename(new)))


def wheelhouse(whl: str, board: Board, py: str, backend: str, dest: str, log) -> list[str]:
    """Every runtime dependency for the board's platform and Python, downloaded from the index."""
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", dest,
           *pip_platform_args(board, py)]
    log(f"deploy: downloading the runtime's wheels for {board.arch} / Python {py}")
    _run(pip + [*runtime_requirements(whl), "pip"], "pip download (runtime dependencies)")
    _run(pip + ["--no-deps", "silero-vad"], "pip download silero-vad")  # its ONNX file only: its torch stays home
    extra = []
    if backend == "tvm":
        extra = [f"{d}=={metadata.version(d)}" for d in TVM_DISTS]
        _run(pip + extra, "pip download (TVM runtime)")
        strip_tvm_compiler(dest)
    return extra


# -- config, service, installer ---------------------------------------------------------------
def edge_toml(board: Board, backend: str, int8: bool, board_ref: str) -> str:
    audio = board.audio or {}
    lines = [f"# ParaEdge on {board.name}, written by `paraedge deploy` (ParaEdge {__version__}).",
             "# Every key is documented in the package's template (edge/resources/edge.toml); relative paths",
             "# resolve against this file's folder. Check it with `paraedge doctor --config edge.toml`.",
             "", f'board = "{board_ref}"', "", "[model]", 'dir = "model"', f'backend = "{backend}"',
             f"int8 = {'true' if int8 else 'false'}", f"threads = {board.threads}", "", "[audio]",
             f'device = "{audio.get("device", "")}"', ""]
    return "\n".join(lines)


def service_unit() -> str:
    text = resource("paraedge.service").read_text(encoding="utf-8")
    return text.replace("/opt/paraedge", "@PREFIX@").replace("/etc/paraedge/edge.toml", "@PREFIX@/edge.toml")


INSTALL_SH = r'''#!/bin/sh
# Install this ParaEdge kit on the board, offline (everything comes from this folder).
#   ./install.sh [--prefix DIR] [--python EXE] [--enable-service]
#     --prefix DIR        where the venv, model and edge.toml go (default /opt/paraedge)
#     --python EXE        the board's Python @PY@ (default python@PY@)
#     --enable-service    install and start the systemd unit (needs root)
# Exit status: 0 installed and `paraedge doctor` passed; 3 installed, doctor found a failure; 2 usage.
# PARAEDGE_RUN, if set, prefixes every program run for the board (an emulator, to test a kit off-board).
set -eu
KIT=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
PREFIX=/opt/paraedge
PYTHON=python@PY@
ENABLE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --enable-service) ENABLE=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
RUN=${PARAEDGE_RUN:-}
have=$($RUN "$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || { echo "install.sh: cannot run $PYTHON: install Python @PY@ or pass --python" >&2; exit 2; }
[ "$have" = "@PY@" ] || { echo "install.sh: this kit is for Python @PY@ but $PYTHON is $have: pass --python" >&2; exit 2; }
mkdir -p "$PREFIX"
PREFIX=$(CDPATH= cd -- "$PREFIX" && pwd)
PY="$PREFIX/venv/bin/python"
echo "paraedge: venv in $PREFIX/venv"
$RUN "$PYTHON" -m venv --without-pip "$PREFIX/venv"
PIPWHL=$(ls "$KIT"/wheels/pip-*.whl | head -n 1)
$RUN "$PY" "$PIPWHL/pip" install -q --no-index --find-links "$KIT/wheels" --no-compile pip
PIP="$RUN $PY -m pip install -q --disable-pip-version-check --no-index --find-links $KIT/wheels --no-compile"
echo "paraedge: installing from the kit (no network)"
$PIP "$KIT"/paraedge-*.whl
$PIP --no-deps silero-vad
if [ -n "@TVM@" ]; then $PIP @TVM@; fi
rm -rf "$PREFIX/model.new" && cp -R "$KIT/model" "$PREFIX/model.new"
rm -rf "$PREFIX/model" && mv "$PREFIX/model.new" "$PREFIX/model"
if [ -f "$PREFIX/edge.toml" ] && ! cmp -s "$KIT/edge.toml" "$PREFIX/edge.toml"; then
  cp "$KIT/edge.toml" "$PREFIX/edge.toml.kit"
  echo "paraedge: kept your $PREFIX/edge.toml; the kit's is $PREFIX/edge.toml.kit"
else
  cp "$KIT/edge.toml" "$PREFIX/edge.toml"
fi
sed "s#@PREFIX@#$PREFIX#g" "$KIT/paraedge.service" > "$PREFIX/paraedge.service"
echo "paraedge: doctor"
status=0
$RUN "$PY" -m edge doctor --config "$PREFIX/edge.toml" || status=3
if [ "$ENABLE" = 1 ]; then
  [ "$status" = 0 ] || { echo "install.sh: doctor found a failure (FAIL above): the service is not enabled" >&2; exit 3; }
  id paraedge >/dev/null 2>&1 || useradd --system --no-create-home --groups audio paraedge
  cp "$PREFIX/paraedge.service" /etc/systemd/system/paraedge.service
  systemctl daemon-reload && systemctl enable --now paraedge
  echo "paraedge: service enabled (journalctl -u paraedge -f)"
fi
echo "paraedge: installed in $PREFIX; run $PREFIX/venv/bin/paraedge run --config $PREFIX/edge.toml"
[ "$status" = 0 ] || echo "install.sh: installed, but doctor found a failure (FAIL above); exit status 3" >&2
exit $status
'''


def deploy(board_name: str, model: str, out: str, backend: str | None = None, python: str | None = None,
           int8: bool | None = None, bundle: str | None = None, source: str | None = None, log=None) -> dict:
    """Write the kit for `board_name` into `out`; returns kit.json's contents."""
    log = log or (lambda m: print(m, file=sys.stderr))
    board = load_board(board_name)
    md = ModelDir(model)
    backend = board_backend(board, backend)
    py = board_python(board, python)
    int8 = (not board.cuda) if int8 is None else int8
    source = source or CHECKOUT
    if not source or not os.path.isfile(os.path.join(source, "setup.py")):
        raise ParaEdgeError("deploy builds the board's wheel from the ParaEdge source: run it from a checkout "
                            "or pass --source DIR (a checkout or an unpacked sdist)")
    output = OutputDir(out, "kit.json", KIT_FORMAT, "deploy kit")  # refuses a folder that is not ours
    with output as tmp:
        model_info = copy_model(md, board, backend, int8, bundle, os.path.join(tmp, "model"), log)
        wheels = os.path.join(tmp, "wheels")
        os.makedirs(wheels)
        whl, kernels_note = board_wheel(source, board, py, tmp, log)
        tvm_reqs = wheelhouse(whl, board, py, backend, wheels, log)
        shipped = not board_name.endswith(".toml") and os.sep not in board_name  # a profile the wheel carries
        board_ref = board.name
        if not shipped:  # a profile of the user's own: it travels with the kit
            shutil.copy(board.path, os.path.join(tmp, "board.toml"))
            board_ref = "@PREFIX@/board.toml"
        with open(os.path.join(tmp, "edge.toml"), "w", encoding="utf-8") as f:
            f.write(edge_toml(board, backend, int8, board_ref))
        with open(os.path.join(tmp, "paraedge.service"), "w", encoding="utf-8") as f:
            f.write(service_unit())
        script = INSTALL_SH.replace("@PY@", py).replace("@TVM@", " ".join(tvm_reqs))
        if not shipped:
            script = script.replace('cp "$KIT/edge.toml" "$PREFIX/edge.toml"\n',
                                    'sed "s#@PREFIX@#$PREFIX#g" "$KIT/edge.toml" > "$PREFIX/edge.toml"\n'
                                    '  cp "$KIT/board.toml" "$PREFIX/board.toml"\n')
        with open(os.path.join(tmp, "install.sh"), "w", encoding="utf-8") as f:
            f.write(script)
        os.chmod(os.path.join(tmp, "install.sh"), 0o755)
        files = digests(tmp)  # before kit.json is written: it lists everything else
        kit = {"format": KIT_FORMAT, "paraedge": __version__, "board": board.name, "arch": board.arch, "python": py,
               "backend": backend, "model": {"source": os.path.abspath(md.path), "hash": model_hash(md), **model_info},
               "wheel": os.path.basename(whl), "kernels": kernels_note,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "files": files}
        with open(os.path.join(tmp, "kit.json"), "w", encoding="utf-8") as f:
            json.dump(kit, f, indent=1)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in files) / 1e6
    log(f"wrote {out}: {board.name}, {backend}, Python {py}, {len(files)} files, {size:.0f} MB; "
        f"on the board: {os.path.basename(os.path.abspath(out))}/install.sh")
    return kit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="paraedge deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", required=True, help="board profile name (see `paraedge boards`) or a .toml path")
    ap.add_argument("--model", "-m", required=True, help="model dir (FunASR layout, exported)")
    ap.add_argument("-o", "--output", required=True, help="kit folder to write (new, empty, or a kit of ours)")
    ap.add_argument("--backend", choices=BACKENDS, help="default: the profile's [runtime] backend, else tvm")
    ap.add_argument("--python", help=f"the board's Python X.Y (default: the profile's [runtime] python, else {DEFAULT_PYTHON})")
    q = ap.add_mutually_exclusive_group()
    q.add_argument("--int8", dest="int8", action="store_true", default=None, help="INT8 (default on CPU boards)")
    q.add_argument("--fp32", dest="int8", action="store_false", help="fp32 (default on CUDA boards)")
    ap.add_argument("--bundle", help="tvm: use this compiled bundle instead of the cache (checked against board and model)")
    ap.add_argument("--source", help="the ParaEdge source to build the wheel from (default: this checkout)")
    a = ap.parse_args(argv)
    deploy(a.board, a.model, a.output, backend=a.backend, python=a.python, int8=a.int8,
           bundle=a.bundle, source=a.source)
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main)
