"""User-facing errors: each carries one line that names the problem (the CLI exits 2 on them)."""


class ParaEdgeError(Exception):
    """Base class; str(err) is a complete one-line message for the user."""


class AudioError(ParaEdgeError):
    """The audio could not be used: unreadable, empty, non-finite, unsupported format."""


class ModelError(ParaEdgeError):
    """A model directory, weights file or artifact is missing, truncated or inconsistent."""


class BackendUnavailable(ParaEdgeError):
    """A backend was asked for but cannot run here (package missing, files not exported)."""
