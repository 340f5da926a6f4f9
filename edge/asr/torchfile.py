"""Read a PyTorch `model.pt` state_dict into numpy without torch (a board has no torch).

The zip format: `<root>/data.pkl` pickles the dict; each tensor's storage is a separate
`<root>/data/<key>` entry referenced through pickle persistent ids. The unpickler here only
knows the handful of globals a state_dict needs, so a checkpoint cannot run code on load.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

from edge.errors import ModelError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    arr = storage
    if len(size) == 0:
        return np.array(arr[offset], dtype=arr.dtype)
    itemsize = arr.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        arr[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, zf: zipfile.ZipFile, root: str, path: str):
        super().__init__(fh)
        self.zf, self.root, self.path = zf, root, path
        self.cache = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "builtins" and name in ("set", "frozenset", "dict", "list", "tuple"):
            return getattr(__import__("builtins"), name)
        raise ModelError(f"{self.path}: holds a Python object ({module}.{name}), not a plain state_dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ModelError(f"{self.path}: unknown persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.cache:
            entry = f"{self.root}/data/{key}"
            try:
                raw = self.zf.read(entry)
            except KeyError:
                raise ModelError(f"{self.path}: tensor data {entry} is missing (truncated file?)") from None
            dtype = storage_type.dtype
            if dtype == "bfloat16":
                arr = _bf16_to_f32(raw)
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            self.cache[key] = arr
        return self.cache[key]


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Load a torch-saved state_dict (or a checkpoint holding one) as {name: ndarray}."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a PyTorch zip checkpoint or truncated ({exc})") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if not pkls:
            raise ModelError(f"{path}: no data.pkl inside (not a torch.save file)")
        root = pkls[0][: -len("/data.pkl")]
        try:
            with zf.open(pkls[0]) as fh:
                obj = _Unpickler(fh, zf, root, str(path)).load()
        except ModelError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
            raise ModelError(f"{path}: corrupt checkpoint ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state_dict, found {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            out[name] = value
    return out
