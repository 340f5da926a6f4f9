"""CUDA bundles for Jetson boards, compiled on the host: NVRTC from PyPI makes the cubins.

TVM's CUDA codegen hands each kernel module's CUDA C to the `tvm_callback_cuda_compile` hook;
here that hook runs NVRTC (nvidia-cuda-nvrtc-cu12, loaded with ctypes; headers from
nvidia-cuda-runtime-cu12 + nvidia-cuda-cccl-cu12) for the board's sm_XY, so the exported .so
embeds cubins and a Jetson needs no compiler at load time. Each cubin is also written to
`cubins/` in the bundle and listed in the manifest (arch, size, sha256 via `files`).

    pip install "nvidia-cuda-nvrtc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*" "nvidia-cuda-cccl-cu12==12.9.*"
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import struct

from edge.errors import ParaEdgeError


class CudaToolError(ParaEdgeError):
    pass


def _nvidia_root() -> str:
    try:
        import nvidia
    except ImportError:
        raise CudaToolError("CUDA bundles need NVRTC from PyPI: pip install 'nvidia-cuda-nvrtc-cu12==12.9.*' "
                            "'nvidia-cuda-runtime-cu12==12.9.*' 'nvidia-cuda-cccl-cu12==12.9.*'") from None
    return list(nvidia.__path__)[0]


def _nvrtc():
    root = _nvidia_root()
    libs = sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    if not libs:
        raise CudaToolError(f"{root}/cuda_nvrtc: libnvrtc.so not found (pip install nvidia-cuda-nvrtc-cu12)")
    lib = ctypes.CDLL(libs[0])
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def include_dirs() -> list[str]:
    root = _nvidia_root()
    dirs = [os.path.join(root, "cuda_runtime", "include"), os.path.join(root, "cuda_cccl", "include"),
            os.path.join(root, "cuda_nvrtc", "include")]
    return [d for d in dirs if os.path.isdir(d)]


def nvrtc_cubin(code: str, arch: str, name: str = "tvm_kernels.cu") -> bytes:
    """CUDA C -> cubin for `arch` (e.g. sm_87) with NVRTC."""
    lib = _nvrtc()

    def check(status, what):
        if status:
            raise CudaToolError(f"NVRTC {what}: {lib.nvrtcGetErrorString(status).decode()}")

    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None), "create")
    try:
        opts = [f"--gpu-architecture={arch}", "-default-device", "--std=c++17", "-DNDEBUG"]
        opts += [f"-I{d}" for d in include_dirs()]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        status = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if status:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            raise CudaToolError(f"NVRTC cannot compile the kernels for {arch}: {buf.value.decode(errors='replace')[:1500]}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, buf), "cubin")
        return buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cuda_modules(mod) -> list:
    """The CUDA kernel modules in an executable's import tree."""
    found, todo = [], [mod]
    while todo:
        m = todo.pop()
        if m.kind == "cuda":
            found.append(m)
        todo.extend(m.imports)
    return found


def _string(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def swap_in_cubins(blob: bytes, sources: list[str], cubins: list[bytes]) -> bytes:
    """Rewrite the packed-imports blob: each CUDA record's (fmt, fmap, CUDA C) -> (cubin, fmap, cubin).

    Record layout (TVM's module serialisation): key string, uint64 payload size, payload =
    fmt string, function-info map, data string; the blob starts with its own uint64 size."""
    for src, cubin in zip(sources, cubins):
        tail = _string(src.encode())
        end = blob.find(tail) + len(tail)
        key, size_at, size = -1, 0, 0
        while end >= len(tail):  # the record whose payload ends exactly where the CUDA C ends
            key = blob.find(_string(b"cuda"), key + 1, end)
            if key < 0:
                break
            size_at = key + 12
            (size,) = struct.unpack_from("<Q", blob, size_at)
            if size_at + 8 + size == end:
                break
        if end < len(tail) or key < 0:
            raise CudaToolError("compile: cannot find the CUDA kernels in the packed module (TVM format changed?)")
        payload = blob[size_at + 8 : end]
        (fmt_len,) = struct.unpack_from("<Q", payload, 0)
        fmap = payload[8 + fmt_len : len(payload) - len(tail)]
        new = _string(b"cubin") + fmap + _string(cubin)
        blob = blob[:size_at] + struct.pack("<Q", len(new)) + new + blob[size_at + 8 + size :]
    return struct.pack("<Q", len(blob) - 8) + blob[8:]


def _c_array(blob: bytes, template: str) -> str:
    head = template[: template.index("const unsigned char __tvm_ffi__library_bin[")]
    tail = template[template.index("};", len(head)) + 2 :]
    rows = (",".join(f"0x{b:02x}" for b in blob[i : i + 32]) for i in range(0, len(blob), 32))
    body = ",\n  ".join(rows)
    return f"{head}const unsigned char __tvm_ffi__library_bin[{len(blob)}] = {{\n  {body}\n}};{tail}"


def export_with_cubins(ex, so_path: str, board, out: str, fcompile) -> dict:
    """export_library with every CUDA kernel module precompiled to a cubin for the board's sm_XY;
    the cubins are also written to cubins/ in the bundle. Returns the manifest's `cuda` entry."""
    import tvm_ffi

    arch = board.target["arch"]
    sources = [m.inspect_source() for m in cuda_modules(ex.mod)]
    if not sources:
        raise CudaToolError("compile: TVM produced no CUDA kernels for a CUDA board")
    cubins = [nvrtc_cubin(src, arch) for src in sources]
    to_tensor = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")
    to_c = tvm_ffi.get_global_func("runtime.ModulePackImportsToC")

    def fpack_imports(mod, is_system_lib, prefix, workspace):
        blob = swap_in_cubins(to_tensor(mod).numpy().tobytes(), sources, cubins)
        path = os.path.join(workspace, f"{prefix}devc.c")
        with open(path, "w") as f:
            f.write(_c_array(blob, to_c(mod, is_system_lib, prefix)))
        return path

    ex.export_library(so_path, fcompile=fcompile, fpack_imports=fpack_imports)
    return write_cubins(cubins, out, arch)


def write_cubins(cubins: list[bytes], out: str, arch: str) -> dict:
    """cubins/ in the bundle + the manifest's `cuda` entry."""
    d = os.path.join(out, "cubins")
    os.makedirs(d, exist_ok=True)
    entries = []
    for i, cubin in enumerate(cubins):
        name = f"kernels{i}.{arch}.cubin"
        with open(os.path.join(d, name), "wb") as f:
            f.write(cubin)
        entries.append({"file": f"cubins/{name}", "bytes": len(cubin), "sha256": hashlib.sha256(cubin).hexdigest()})
    return {"cuda": {"arch": arch, "cubins": entries, "nvrtc": "nvidia-cuda-nvrtc-cu12"}}
