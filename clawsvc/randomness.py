"""Random tokens straight from the kernel's CSPRNG (what the `secrets` module does, without the hmac, hashlib and
random imports it drags into `clawsvc run`'s path to the gateway's spawn)."""

from __future__ import annotations

import os


def token_urlsafe(nbytes: int) -> str:
    import base64  # only here: token_hex is on the start plan's path, which imports next to nothing

    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def token_hex(nbytes: int) -> str:
    return os.urandom(nbytes).hex()
