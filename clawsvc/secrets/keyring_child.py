"""The only module that imports `keyring`; run as `python -m clawsvc.secrets.keyring_child` by clawsvc.secrets.

Importing keyring and resolving its backend costs ~13 MiB that a 24/7 service would carry for good, and a
Secret Service waiting for a GUI prompt can hang the call; in a short-lived child both are bounded: the
parent kills it at its deadline and the memory goes with it.

Request on stdin (one JSON object): {"op": "status"|"get"|"set"|"delete", "service": str,
"usernames": [str, ...], "value": str}. Reply on stdout: {"backend": str, "error": str|null,
"values": {username: str|null}, "deleted": bool}. Secrets travel only over these pipes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}".rstrip(": ")


def _backend_name(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Runs one keyring operation; every keyring failure becomes the reply's one-line "error"."""
    import keyring
    import keyring.backends.fail
    import keyring.backends.null
    import keyring.errors

    reply: dict[str, Any] = {"backend": "", "error": None, "values": {}, "deleted": False}
    try:
        backend = keyring.get_keyring()
        reply["backend"] = _backend_name(backend)
        if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
            reply["error"] = f"no keyring backend ({reply['backend']})"
            return reply
        service, usernames, op = request["service"], request.get("usernames", []), request["op"]
        if op == "get":
            reply["values"] = {name: backend.get_password(service, name) or None for name in usernames}
        elif op == "set":
            backend.set_password(service, usernames[0], request["value"])
        elif op == "delete":
            try:
                backend.delete_password(service, usernames[0])
                reply["deleted"] = True
            except keyring.errors.PasswordDeleteError:
                pass
    except keyring.errors.NoKeyringError:
        reply["error"] = "no keyring backend is available"
    except Exception as exc:  # a broken backend is reported, never a traceback that could quote a value
        reply["error"] = f"the keyring failed: {_first_line(exc)}"
    return reply


def main() -> int:
    reply_to = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a chatty backend must not corrupt the reply
    sys.stdout = sys.stderr
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as exc:
        print(f"clawsvc.secrets.keyring_child: bad request: {exc.__class__.__name__}", file=sys.stderr)
        return 2
    with reply_to:
        json.dump(handle(request), reply_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
