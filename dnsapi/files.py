"""Writing a small file safely: the secrets vault-init and the dev stack write, the hooks
`dnsapi hooks install` copies."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` by a file holding `data`, with `mode` (and `owner`, uid and gid) from the
    first byte.

    Nothing planted in the directory can receive `data`: the temp file has an unpredictable name
    and is created exclusively without following symlinks (mkstemp), and the final rename replaces
    whatever is at `path` instead of writing through it. Synced before the rename, so a crash
    leaves the old file or the new one, never a truncated one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            handle.write(data)
            handle.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # makes the rename itself durable
    finally:
        os.close(directory)
