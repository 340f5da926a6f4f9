"""Output folders that `compile` and `deploy` may write: nothing is deleted that ParaEdge did not write.

A folder is writable when it is missing, empty, or one of our own artefacts of the same kind (its
manifest names our format and lists every file in it). Anything else (a checkout, a home
folder, a bundle with a user's notes added) is refused with a one-line error before any work.
The new artefact is built in a sibling temporary folder and swapped in at the end, so a failed
build leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from edge.asr.modeldir import sha256_file
from edge.errors import ParaEdgeError


def files_in(folder: str) -> list[str]:
    """Every file below folder, as sorted paths relative to it: what an artefact's manifest lists."""
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names)


def digests(folder: str, skip: str = "") -> dict:
    """{relative path: sha256} of every file below folder but `skip` (the manifest itself)."""
    return {f: sha256_file(os.path.join(folder, f)) for f in files_in(folder) if f != skip}


def _own_files(out: str, manifest: str, fmt: str) -> bool:
    try:
        with open(os.path.join(out, manifest), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != fmt or not isinstance(meta.get("files"), dict):
        return False
    return set(files_in(out)) <= set(meta["files"]) | {manifest}


class OutputDir:
    """with OutputDir(out, "manifest.json", BUNDLE_FORMAT, "TVM bundle") as tmp: write into tmp."""

    def __init__(self, out: str, manifest: str, fmt: str, kind: str):
        self.out, self.kind = os.path.abspath(out), kind
        if os.path.exists(self.out):
            if not os.path.isdir(self.out):
                raise ParaEdgeError(f"{out}: exists and is not a folder; give -o a new or empty folder")
            if os.listdir(self.out) and not _own_files(self.out, manifest, fmt):
                raise ParaEdgeError(f"{out}: not empty and not a {kind} written by ParaEdge (files it did not write, "
                                    f"or no {manifest} of format {fmt}); nothing was deleted: give -o a new or empty folder")
        self.tmp = ""

    def __enter__(self) -> str:
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.partial-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if os.path.exists(self.out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.old-", dir=os.path.dirname(self.out))
            os.rmdir(old)
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        os.chmod(self.out, 0o755)  # mkdtemp makes 0700 folders; an artefact is read by the service user too
        if old:
            shutil.rmtree(old)
