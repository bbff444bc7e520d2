"""Naming local users, and the service user the system units run as."""

from __future__ import annotations

import pwd

SERVICE_USER = "clawsvc"  # the user the system units run as (units/clawsvc.sysusers.conf)


def user_name(uid: int) -> str:
    """The passwd name of uid, or the number for a uid without an entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe_uid(uid: int) -> str:
    """"user nobody (uid 65534)", or "uid 4000123" for a uid without a passwd entry."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"user {name} (uid {uid})"


def service_uid() -> int | None:
    """The uid of SERVICE_USER, or None on a system where it was never created."""
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None
