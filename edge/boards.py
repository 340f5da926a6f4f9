"""Board profiles (`boards/*.toml`): what a target board is, for the compiler and the runtime.

A profile names the CPU (arch, ISA features as /proc/cpuinfo spells them), the TVM target (and
host, for CUDA boards), the cross compiler, default threads, a memory budget and audio defaults.
`paraedge compile` reads it on the host; the TVM backend re-checks the running CPU against the
bundle's profile so a wrong-board bundle fails with a message instead of SIGILL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from edge.assets import boards_dir as default_boards_dir
from edge.errors import ParaEdgeError, sub_dict
from edge.platform import cpu_features, machine
from edge.asr.audio import SAMPLE_RATE

ARCHES = ("aarch64", "x86_64")
TARGET_KINDS = ("llvm", "cuda")


class BoardError(ParaEdgeError):
    """A board profile is unknown, unreadable or incomplete."""


@dataclass
class Board:
    name: str
    description: str
    arch: str
    cores: str
    features: list[str]
    target: dict
    host: dict | None
    cc: str
    threads: int
    memory_mb: int
    audio: dict
    qemu_cpu: str | None = None
    emulated: bool = False
    path: str = ""
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def cuda(self) -> bool:
        return self.target.get("kind") == "cuda"

    def tvm_target_json(self) -> str:
        return json.dumps(self.target, sort_keys=True)

    def summary(self) -> str:
        kind = f"cuda {self.target.get('arch')}" if self.cuda else self.target.get("mcpu", "generic")
        return f"{self.name:<18} {self.arch:<7} {kind:<11} {self.threads} thr {self.memory_mb:>5} MB  {self.description}"


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BoardError(f"{path}: board profile not found") from None
    except OSError as exc:  # a directory, unreadable
        raise BoardError(f"{path}: cannot read the board profile ({exc.strerror or type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise BoardError(f"{path}: not UTF-8 text; a board profile is TOML") from None


def _table(d: dict, section: str, where: str) -> dict:
    return sub_dict(d, section, f"{where}: [{section}]", BoardError, "table")


def _need(d: dict, section: str, key: str, kind, where: str):
    value = _table(d, section, where).get(key) if section else d.get(key)
    name = f"[{section}] {key}" if section else key
    if value is None:
        raise BoardError(f"{where}: {name} is missing")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BoardError(f"{where}: {name} must be {getattr(kind, '__name__', kind)}, got {value!r:.60}")
    return value


def parse_board(d: dict, where: str) -> Board:
    """A profile dict (parsed TOML) -> Board, every field checked with a message naming it."""
    name = _need(d, None, "name", str, where)
    if not name.isprintable():  # it is quoted in one-line errors
        raise BoardError(f"{where}: name {name!r:.60} holds a control character")
    arch = _need(d, "cpu", "arch", str, where)
    if arch not in ARCHES:
        raise BoardError(f"{where}: [cpu] arch {arch!r:.40} is not supported ({', '.join(ARCHES)})")
    features = _need(d, "cpu", "features", list, where)
    if not all(isinstance(f, str) and f.isprintable() for f in features):
        raise BoardError(f"{where}: [cpu] features must be flag names as /proc/cpuinfo spells them, got {features!r:.60}")
    target = _need(d, "tvm", "target", dict, where)
    kind = target.get("kind")
    if kind not in TARGET_KINDS:
        raise BoardError(f"{where}: [tvm] target kind {kind!r:.40} is not supported ({', '.join(TARGET_KINDS)})")
    host = _table(d, "tvm", where).get("host")
    if host is not None and not isinstance(host, dict):
        raise BoardError(f"{where}: [tvm] host must be a table {{ kind = \"llvm\", ... }}, got {type(host).__name__}")
    if kind == "cuda":
        if not isinstance(host, dict) or host.get("kind") != "llvm":
            raise BoardError(f"{where}: a CUDA board needs [tvm] host = {{ kind = \"llvm\", ... }} for its CPU")
        if not str(target.get("arch", "")).startswith("sm_"):
            raise BoardError(f"{where}: a CUDA target needs arch = \"sm_XY\"")
    llvm = host if kind == "cuda" else target
    triple = str(llvm.get("mtriple", ""))
    if triple and not triple.startswith(arch):
        raise BoardError(f"{where}: target mtriple {triple!r:.60} does not match [cpu] arch '{arch}'")
    threads = _need(d, "runtime", "threads", int, where)
    memory = _need(d, "runtime", "memory_mb", int, where)
    if threads < 1 or memory < 1:
        raise BoardError(f"{where}: [runtime] threads and memory_mb must be positive")
    audio = _table(d, "audio", where)
    rate = audio.get("sample_rate", SAMPLE_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise BoardError(f"{where}: [audio] sample_rate must be a positive integer (Hz), got {rate!r:.40}")
    cpu = _table(d, "cpu", where)
    return Board(
        name=name, description=str(d.get("description", "")), arch=arch, cores=str(cpu.get("cores", "")),
        features=list(features), target=dict(target), host=dict(host) if host else None,
        cc=_need(d, "tvm", "cc", str, where), threads=threads, memory_mb=memory, audio=dict(audio),
        qemu_cpu=cpu.get("qemu_cpu"), emulated=bool(cpu.get("emulated", False)), path=where, raw=d,
    )


def board_names(boards_dir: str | None = None) -> list[str]:
    boards_dir = str(boards_dir or default_boards_dir())
    if not os.path.isdir(boards_dir):
        return []
    return sorted(f[:-5] for f in os.listdir(boards_dir) if f.endswith(".toml"))


def load_board(name_or_path: str, boards_dir: str | None = None) -> Board:
    """A board by name (`boards/<name>.toml`) or by path to a .toml file."""
    boards_dir = str(boards_dir or default_boards_dir())
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = name_or_path
    else:
        path = os.path.join(boards_dir, name_or_path + ".toml")
        if not os.path.isfile(path):
            known = ", ".join(board_names(boards_dir)) or "none"
            raise BoardError(f"unknown board '{name_or_path}' (known: {known})")
    board = parse_board(_load_toml(path), path)
    stem = os.path.basename(path)[:-5]
    if not name_or_path.endswith(".toml") and board.name != stem:
        raise BoardError(f"{path}: name {board.name!r:.60} differs from the file name '{stem}'")
    return board


def all_boards(boards_dir: str | None = None) -> list[Board]:
    return [load_board(n, boards_dir) for n in board_names(boards_dir)]


def check_runs_here(board: Board) -> None:
    """Refuse, with the reason, a board whose code this CPU cannot run."""
    here = machine()
    if here != board.arch:
        raise BoardError(f"bundle is for board '{board.name}' ({board.arch}); this machine is {here}")
    have = cpu_features()
    missing = [f for f in board.features if f not in have]
    if have and missing:
        raise BoardError(f"bundle is for board '{board.name}'; this CPU lacks {', '.join(missing)}")
