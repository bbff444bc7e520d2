"""Walking a path the way the kernel resolves it, one component and one symlink at a time, so that every directory
passed through and every symlink followed can be judged (trust.resolve)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

Judge = Callable[[str, os.stat_result], None]

MAX_LINKS = 40  # the kernel's limit on symlinks followed while resolving one path


def walk(path: str, passage: Judge, link: Judge, too_many: Callable[[], Exception]
         ) -> tuple[str, os.stat_result | None]:
    """(`path` with every symlink and `..` resolved, lstat of it or None if missing). `passage` judges each
    directory passed through (from "/"), `link` each symlink followed; they refuse by raising. OSError for I/O
    trouble (ENOTDIR, EACCES...)."""
    current = "/"
    st: os.stat_result = os.lstat(current)
    passage(current, st)
    absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)  # no normpath: `..` is walked
    todo = absolute.split("/")[::-1]
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current)
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return os.path.join(candidate, *[part for part in reversed(todo) if part]), None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise too_many()
            link(candidate, st)
            target = os.readlink(candidate)
            # a relative target continues from the link's directory (where the walk stands), not from the link
            if target.startswith("/"):
                current = "/"
            st = os.lstat(current)
            todo.extend(target.split("/")[::-1])
            continue
        if todo:
            passage(candidate, st)
        current = candidate
    return current, st


def open_dir_nofollow(path: str) -> int:
    """An O_DIRECTORY descriptor of the absolute `path`, opened one component at a time from "/" with O_NOFOLLOW:
    a symlink anywhere on the way (one planted since the path was judged) fails with ELOOP or ENOTDIR instead of
    being followed. The caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for name in path.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                raise OSError(errno.EINVAL, "'..' in a path opened without following links", path)
            nxt = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
