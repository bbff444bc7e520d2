"""The client end of the control socket: `clawsvc status/rpc/restart-gateway`, doctor and the tests use it.

The server is checked before anything is sent: whoever can create the socket path (e.g. another user who
made /tmp/clawsvc-UID first) must not receive our requests or feed us answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clawsvc.config import SYSTEM_CONTROL_SOCKET
from clawsvc.control.wire import (
    MAX_REPLY,
    MAX_REQUEST,
    ControlError,
    LineTooLong,
    ServiceNotRunning,
    encode,
    peer_of,
    read_line,
)
from clawsvc.users import describe_uid, service_uid

CONNECT_WINDOW = 3.0  # how long a client retries while the socket's queue is full or the server says BUSY
RETRY_PAUSE = 0.05


class ClientRefusal(ControlError):
    """The client itself refused to go on: a server of an untrusted uid, or a reply beyond MAX_REPLY."""


class RequestTooLarge(ControlError):
    """The request would exceed MAX_REQUEST; nothing was sent."""


def request(path: Path, message: dict[str, Any], timeout: float) -> Any:
    """Send one request to the service and return its result; raise ControlError / ServiceNotRunning."""
    payload = encode(message)
    if len(payload) > MAX_REQUEST:
        raise RequestTooLarge("TOO_LARGE", f"the request is {len(payload)} bytes; clawsvc takes at most "
                                           f"{MAX_REQUEST}")
    deadline = time.monotonic() + timeout
    busy_until = time.monotonic() + min(timeout, CONNECT_WINDOW)
    while True:
        with _connect(path, min(timeout, CONNECT_WINDOW)) as sock:
            _check_server(sock, path)
            line = _exchange(sock, payload, path, deadline, timeout)
        try:
            return _result(line, path)
        except ControlError as exc:  # BUSY: nothing was done, so asking again is safe
            if exc.code != "BUSY" or time.monotonic() + RETRY_PAUSE >= busy_until:
                raise
        time.sleep(RETRY_PAUSE)


def follow(path: Path, message: dict[str, Any], timeout: float) -> Iterator[bytes]:
    """Send one streaming request; once the service accepted it (within `timeout`), yield each line it sends
    until it closes the connection. Raises like request() before the first line."""
    payload = encode(message)
    if len(payload) > MAX_REQUEST:
        raise RequestTooLarge("TOO_LARGE", f"the request is {len(payload)} bytes; clawsvc takes at most "
                                           f"{MAX_REQUEST}")
    with _connect(path, min(timeout, CONNECT_WINDOW)) as sock:
        _check_server(sock, path)
        with contextlib.suppress(OSError):  # a refusal may come with the connection already closed: read on
            sock.sendall(payload)
        lines = _lines(sock, path, time.monotonic() + timeout, timeout)
        first = next(lines, b"")
        if not first:
            raise ControlError("DISCONNECTED", f"clawsvc at {path} closed the connection without answering")
        _result(first, path)
        yield from lines


def _lines(sock: socket.socket, path: Path, deadline: float, timeout: float) -> Iterator[bytes]:
    """The lines the server sends, until it closes; only the first must arrive before `deadline`."""
    partial: list[bytes] = []  # the line being received, in chunks (joined once, when it is complete)
    size = 0
    first = True
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()) if first else None)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            raise ControlError("TIMEOUT", f"no answer from clawsvc at {path} within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError("DISCONNECTED", f"connection to clawsvc at {path} failed: "
                                               f"{exc.strerror or exc}") from None
        if not chunk:
            if partial:
                yield b"".join(partial)
            return
        head, *rest = chunk.split(b"\n")
        partial.append(head)
        size += len(head)
        if size > MAX_REPLY:
            raise ClientRefusal("TOO_LARGE", f"clawsvc at {path} sent a line of more than {MAX_REPLY >> 20} MiB; "
                                             "not reading on")
        if not rest:
            continue
        first = False
        yield b"".join(partial)
        yield from rest[:-1]
        partial, size = [rest[-1]], len(rest[-1])


def trusted_server_uids(path: Path) -> set[int]:
    """Root and ourselves; the service user too for root (who can become it anyway) and below /run/clawsvc,
    which systemd creates for that user: there it is the real service, e.g. for a control.group member."""
    trusted = {0, os.geteuid()}
    below_system_dir = Path(os.path.normpath(path.absolute())).is_relative_to(SYSTEM_CONTROL_SOCKET.parent)
    service = service_uid()
    if service is not None and (os.geteuid() == 0 or below_system_dir):
        trusted.add(service)
    return trusted


def _check_server(sock: socket.socket, path: Path) -> None:
    try:
        server = peer_of(sock)
    except OSError as exc:
        raise ControlError("UNREACHABLE", f"cannot tell who serves {path}: {exc.strerror or exc}") from None
    if server is None:
        return  # no SO_PEERCRED (macOS): the directory's owner and mode are the only gate
    if server.uid not in trusted_server_uids(path):
        raise ClientRefusal("UNTRUSTED", f"{path} is served by {describe_uid(server.uid)}, not by clawsvc's user; "
                                         "refusing to send the request")


def _connect(path: Path, window: float) -> socket.socket:
    """A connected socket; a full queue (EAGAIN) is retried for `window` seconds, every other failure raises."""
    give_up = time.monotonic() + window
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(window)
            sock.connect(str(path))
            return sock
        except (BlockingIOError, TimeoutError):
            sock.close()
            if time.monotonic() >= give_up:
                raise ControlError("BUSY", f"clawsvc at {path} is not taking connections (its queue stayed full "
                                           f"for {window:g}s); try again") from None
            time.sleep(RETRY_PAUSE)
        except OSError as exc:
            sock.close()
            raise _connect_error(path, exc) from None


def _connect_error(path: Path, exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return ServiceNotRunning(f"not running (no control socket at {path})")
    if isinstance(exc, ConnectionRefusedError):
        return ServiceNotRunning(f"not running ({path} is a stale socket: nothing accepts on it)")
    if isinstance(exc, PermissionError):
        return ControlError("EACCES", f"permission denied opening {path} (run as the service user or root, "
                                      "or ask for control.group membership)")
    return ControlError("UNREACHABLE", f"cannot connect to {path}: {exc.strerror or exc}")


def _exchange(sock: socket.socket, payload: bytes, path: Path, deadline: float, timeout: float) -> bytes:
    with contextlib.suppress(OSError):  # the server may have answered and hung up unread (a refusal): read on
        sock.sendall(payload)
    try:
        line = read_line(sock, deadline, MAX_REPLY)
    except TimeoutError:
        raise ControlError("TIMEOUT", f"no answer from clawsvc at {path} within {timeout:g}s") from None
    except LineTooLong:
        raise ClientRefusal("TOO_LARGE", f"clawsvc at {path} sent a reply of more than {MAX_REPLY >> 20} MiB; "
                                         "not reading it") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise ControlError("DISCONNECTED", f"connection to clawsvc at {path} failed: {reason}") from None
    if not line:
        raise ControlError("DISCONNECTED", f"clawsvc at {path} closed the connection without answering")
    return line


def _result(line: bytes, path: Path) -> Any:
    try:
        reply = json.loads(line)
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply["error"]
        raise ControlError(str(error.get("code") or "UNKNOWN"), str(error.get("message") or ""), error.get("details"))
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        raise ControlError("BAD_REPLY", f"clawsvc at {path} sent an unreadable reply") from None
