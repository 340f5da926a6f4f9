"""Read a PyTorch `model.pt` state_dict into numpy without torch (a board has no torch).

The zip format: `<root>/data.pkl` pickles the dict; each tensor's storage is a separate
`<root>/data/<key>` entry referenced through pickle persistent ids. The unpickler here only
knows the handful of globals a state_dict needs, so a checkpoint cannot run code on load; and
every tensor view is bounds-checked against its storage before it is built, so a crafted
size/stride/offset cannot read outside the storage (as_strided does no checks of its own). Nothing
is allocated by what the file claims: storages and tensors are counted against a budget first, and
the pickle is read by the pure-Python unpickler (see _Unpickler).
"""

from __future__ import annotations

import collections
import math
import os
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
MAX_ELEMENTS = 1 << 31  # no Paraformer tensor comes near it; a bigger claim is a crafted file
BUDGET_FACTOR, BUDGET_SLACK = 8, 1 << 24  # bytes a checkpoint may make us allocate: 8x its size + 16 MiB


def _one_line(text, limit: int = 200) -> str:
    """Text from the file (zip names, pickled strings, reprs of arrays) inside an error message: one
    line, bounded. str.split() breaks on every separator str.splitlines() knows, \x85 and \u2028 too."""
    return " ".join(str(text).split())[:limit]


class _Bad(Exception):
    """A malformed checkpoint detail; load_state_dict turns it into one ModelError naming the file."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __call__(self, *args, **kwargs):  # torch.FloatStorage(...) in a pickle: not how state_dicts store data
        raise _Bad(f"constructs a torch.{self.name} directly (not a torch.save state_dict)")

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32)


def _ints(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _Bad(f"tensor {what} {value!r:.80} is not a tuple of integers")
    if any(v < 0 for v in value):
        raise _Bad(f"tensor {what} {tuple(value)!r:.80} is negative")
    return tuple(value)


def _rebuild_parameter(data=None, requires_grad=None, backward_hooks=None, *_, **_kw):
    return data


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo by the largest index a
# PUT opcode names (LONG_BINPUT 1769300581, from one mutated byte: a 28 GB table it then zeroes)
# and allocates a BINBYTES buffer by its claimed length before reading it. Here the memo is a dict
# and every read is bounded by the data.pkl entry (whose size is checked first); a state_dict's
# pickle is small.
class _Unpickler(pickle._Unpickler):  # pickle.py's documented pure-Python implementation
    # but not protocol 5's BYTEARRAY8, the one opcode it sizes by a claim (bytearray(n), then read):
    # torch.save writes protocol 2
    def _no_bytearray8(self):
        raise _Bad("holds a protocol-5 bytearray, which torch.save does not write")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _no_bytearray8}  # noqa: RUF012 - as pickle's own

    def __init__(self, fh, zf: zipfile.ZipFile, root: str, path: str, budget: int):
        super().__init__(fh)
        self.zf, self.root, self.path = zf, root, path
        self.budget = budget  # bytes this file may still make us allocate
        self.cache = {}

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.budget:
            raise _Bad(f"{what} needs {nbytes} bytes, more than a {os.path.getsize(self.path)}-byte checkpoint holds")
        self.budget -= nbytes

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "builtins" and name in ("set", "frozenset", "dict", "list", "tuple"):
            return getattr(__import__("builtins"), name)
        raise ModelError(f"{self.path}: holds a Python object ({_one_line(f'{module}.{name}', 100)}), "
                         "not a plain state_dict")

    def rebuild_tensor(self, storage=None, offset=None, size=None, stride=None, *_ignored, **_kw):
        # strides below are in elements of a flat, contiguous buffer: only a storage is one
        if not isinstance(storage, np.ndarray) or storage.ndim != 1 or not storage.flags.c_contiguous:
            raise _Bad(f"tensor storage is {type(storage).__name__}, not a storage reference")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise _Bad(f"tensor storage offset {offset!r:.40} is not a non-negative integer")
        size, stride = _ints(size, "size"), _ints(stride, "stride")
        if len(size) != len(stride):
            raise _Bad(f"tensor size {size!r:.80} and stride {stride!r:.80} differ in length")
        numel = math.prod(size)  # Python ints: no overflow
        if numel > MAX_ELEMENTS or any(n > MAX_ELEMENTS for n in size):
            raise _Bad(f"tensor size {size!r:.80} claims more than {MAX_ELEMENTS} elements")
        # stride-0 or overlapping views can claim far more than the storage holds: count the copy
        self.spend(numel * storage.dtype.itemsize, f"tensor of size {size!r:.80}")
        if numel == 0:
            if offset > storage.size:
                raise _Bad(f"tensor storage offset {offset} is past its storage's {storage.size} elements")
            return np.zeros(size, dtype=storage.dtype)
        # the furthest element the view reaches must lie inside the storage
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise _Bad(f"tensor (offset {offset}, size {size!r:.80}, stride {stride!r:.80}) reaches element {last}, "
                       f"outside its storage of {storage.size}")
        if not size:
            return np.array(storage[offset], dtype=storage.dtype)
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
        )
        return np.ascontiguousarray(view)

    def persistent_load(self, pid):
        # torch.save writes ('storage', <StorageType>, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], (str, int))):
            raise _Bad(f"unknown persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.cache:
            entry = f"{self.root}/data/{key}"
            try:
                info = self.zf.getinfo(entry)
            except KeyError:
                raise _Bad(f"tensor data {entry} is missing (truncated file?)") from None
            if info.file_size % storage_type.itemsize:
                raise _Bad(f"tensor data {entry} is {info.file_size} bytes, not whole {storage_type.name} elements")
            # checked before reading: a deflated entry can claim any size (a zip bomb)
            self.spend(info.file_size * (2 if storage_type.dtype == "bfloat16" else 1), f"tensor data {entry}")
            raw = self.zf.read(entry)
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
    # BadZipFile, and for a corrupt central directory also NotImplementedError ("zip file version
    # 25.5"), UnicodeDecodeError (a name flagged UTF-8 that is not), struct.error...
    except Exception as exc:  # noqa: BLE001 - the constructor only parses the directory
        raise ModelError(f"{path}: not a PyTorch zip checkpoint or truncated "
                         f"({type(exc).__name__}: {_one_line(exc)})") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if not pkls:
            raise ModelError(f"{path}: no data.pkl inside (not a torch.save file)")
        root = pkls[0][: -len("/data.pkl")]
        # what a real state_dict allocates: its storages (bf16 widened 2x) plus one copy of each
        # tensor (tied weights: two); far less than this bound, which a crafted file hits first
        budget = BUDGET_FACTOR * os.path.getsize(path) + BUDGET_SLACK
        pkl_size = zf.getinfo(pkls[0]).file_size  # what reading data.pkl can unpack at most: a deflate bomb?
        if pkl_size > budget:
            raise ModelError(f"{path}: corrupt checkpoint: {pkls[0]!r:.80} unpacks to {pkl_size} bytes, more than "
                             f"a {os.path.getsize(path)}-byte checkpoint holds")
        try:
            with zf.open(pkls[0]) as fh:
                obj = _Unpickler(fh, zf, root, str(path), budget).load()
        except ModelError:
            raise
        except _Bad as exc:
            raise ModelError(f"{path}: corrupt checkpoint: {_one_line(exc, 300)}") from None
        except Exception as exc:  # noqa: BLE001 - only whitelisted callables run: any error is malformed data
            raise ModelError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state_dict, found {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if isinstance(name, str) and isinstance(value, np.ndarray):  # parameter names are strings
            out[name] = value
    return out
