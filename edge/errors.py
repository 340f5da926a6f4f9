"""User-facing errors: each carries one line that names the problem (the CLI exits 2 on them)."""


class ParaEdgeError(Exception):
    """Base class; str(err) is a complete one-line message for the user."""


class AudioError(ParaEdgeError):
    """The audio could not be used: unreadable, empty, non-finite, unsupported format."""


class ModelError(ParaEdgeError):
    """A model directory, weights file or artifact is missing, truncated or inconsistent."""


class BackendUnavailable(ParaEdgeError):
    """A backend was asked for but cannot run here (package missing, files not exported)."""


def sub_dict(d: dict, key: str, name: str, error: type = ParaEdgeError, kind: str = "mapping") -> dict:
    """d[key] as a dict ({} when absent or null): a config section of the wrong type is one error
    naming it (`name`), not an AttributeError later. Used for config.yaml and board profiles."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{name} must be a {kind}, got {type(value).__name__}")
    return value


def open_regular(path, mode: str = "r", **kwargs):
    """open(), refusing a FIFO or device where a file is read whole: opening a FIFO blocks until a
    writer comes (config.yaml, a hotword list, a grammar or edge.toml made a FIFO hung `info`,
    `transcribe` and `doctor` forever). Raises OSError (EINVAL) naming the path, as open() would."""
    import errno
    import os
    import stat

    if not isinstance(path, (str, bytes, os.PathLike)):  # open(2) would take it as a descriptor, and close it
        raise OSError(errno.EINVAL, f"not a file path: {type(path).__name__} {path!r:.40}")
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except OSError:
        kind = None  # open() below raises the usual FileNotFoundError etc.
    if kind not in (None, stat.S_IFREG, stat.S_IFDIR):
        raise OSError(errno.EINVAL, "not a regular file (a pipe or device?); give a file", str(path))
    return open(path, mode, **kwargs)


def check_output_dir(path: str, option: str) -> None:
    """Refuse, before any work, an output directory that cannot be made: an existing file there
    made os.makedirs raise FileExistsError after a whole profiling run."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise ParaEdgeError(f"{option} {path}: exists and is not a directory; give a directory (it is created if missing)")
