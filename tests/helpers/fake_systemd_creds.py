"""A stand-in `systemd-creds` for fast tests: `encrypt --name=N - FILE` and `decrypt --name=N FILE -` only.

It fails loudly (exit 97) when a secret arrives in argv: the value on stdin, or $FAKE_CREDS_SECRET. The file it
writes holds the name and the value reversed and base64-encoded, so the value's bytes never appear in it.
Each call's argv is appended to $FAKE_CREDS_LOG (one JSON list per line); $FAKE_CREDS_FAIL=1 makes encrypt fail
after creating its output file (a half-written one must not survive).
"""

import base64
import json
import os
import sys

MAGIC = "fake-systemd-creds v1"


def refuse(why: str, code: int) -> None:
    print(f"fake systemd-creds: {why}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str]) -> None:
    if os.environ.get("FAKE_CREDS_LOG"):
        with open(os.environ["FAKE_CREDS_LOG"], "a") as log:
            log.write(json.dumps(argv) + "\n")
    secret = os.environ.get("FAKE_CREDS_SECRET")
    if secret and any(secret in arg for arg in argv):
        refuse("A SECRET ARRIVED IN ARGV", 97)
    if len(argv) != 4 or not argv[1].startswith("--name=") or argv[1] == "--name=":
        refuse(f"unexpected arguments {argv!r}", 99)
    op, name = argv[0], argv[1].removeprefix("--name=")
    if op == "encrypt" and argv[2] == "-":
        value = sys.stdin.buffer.read()
        if value and any(value.decode() in arg for arg in argv):
            refuse("A SECRET ARRIVED IN ARGV", 97)
        with open(argv[3], "w") as out:
            if os.environ.get("FAKE_CREDS_FAIL"):
                refuse("encryption failed (as asked by FAKE_CREDS_FAIL)", 1)
            out.write(f"{MAGIC}\n{name}\n{base64.b64encode(value[::-1]).decode()}\n")
    elif op == "decrypt" and argv[3] == "-":
        try:
            with open(argv[2]) as found:
                magic, embedded, blob = found.read().splitlines()
        except (OSError, ValueError):
            refuse(f"Failed to decrypt {argv[2]}: not a credential", 1)
        if magic != MAGIC or embedded != name:
            refuse(f"Embedded credential name '{embedded}' does not match filename '{name}', refusing.", 1)
        sys.stdout.buffer.write(base64.b64decode(blob)[::-1])
    else:
        refuse(f"unexpected arguments {argv!r}", 99)


main(sys.argv[1:])
