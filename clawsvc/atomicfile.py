"""A file replaced whole: a reader sees the old content or the new, never half of it, and nothing is ever written
through a link another user planted at the temporary name or at the file itself."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(target: Path, data: bytes, mode: int) -> None:
    """`data` into TARGET's directory as .NAME.clawsvc-tmp (a leftover removed first, then created O_EXCL|O_NOFOLLOW
    with `mode` before any content is in it), then renamed over `target` (os.replace swaps a link at `target`
    itself, not what it points to)."""
    tmp = target.with_name(f".{target.name}.clawsvc-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask narrowed it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
