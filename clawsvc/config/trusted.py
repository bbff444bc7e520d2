"""The trust rules (clawsvc.trust) applied to the paths a config names: the config file, gateway.state_dir, and
the token file or the token clawsvc generated there. Part of the one validation `run`, `check-config` and a
reload share (clawsvc.service.preflight)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clawsvc import trust
from clawsvc.config.model import Config


def _check_generated_token(state_dir: Path) -> None:
    path = state_dir / trust.GENERATED_TOKEN_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    what = "generated gateway token"
    if stat.S_ISLNK(st.st_mode):
        raise trust.link_refused(path, what)
    trust.check_owned(path, st, what, directory=False, mode_fix="600")
    trust.check_size(path, st, what)


def _check_token_file(path: Path) -> None:
    st = trust.check_file(path, "auth.token_file", "600")
    if st is None:
        raise trust.TrustError(f"auth.token_file {path} does not exist; create it (mode 0600, one line holding the "
                               "token) or set auth.token_file: null")
    trust.check_size(path, st, "auth.token_file")


def check_config_paths(config: Config) -> None:
    """Raise TrustError when a path the config names (config file, state dir, token file) is not trusted."""
    try:
        if config.source is not None:
            trust.check_file(config.source, "config file")
        state_dir = trust.check_dir(config.gateway.state_dir.absolute(), "gateway.state_dir")
        token_file = config.auth.token_file
        if token_file is not None:
            _check_token_file(token_file)
        if state_dir is not None and token_file is None:
            _check_generated_token(state_dir)
    except OSError as exc:
        raise trust.TrustError(f"cannot check {exc.filename}: {exc.strerror or exc.__class__.__name__}") from None
