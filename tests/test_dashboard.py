"""`clawsvc dashboard`: what the service makes of the gateway's `openclaw dashboard --json` (only the one-time
link leaves, never the shared-token `url`), how the client shows it, and `install`'s last words (clawsvc on PATH).
The real gateway's link, and a real browser opening it: tests/test_assistant_real.py, test_systemd_assistant.py."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from clawsvc.commands.control import dashboard as client
from clawsvc.commands.install import closing
from clawsvc.gateway.dashboard import Dashboard, DashboardError, parse
from clawsvc.logs import register_secret

TOKEN = "shared-gateway-token-" + "k" * 20
LINK = ("http://127.0.0.1:18789/#bootstrapToken=NbufirW39oPKytULVT48H52pkN2sPW6mnrHlWPQZN_Q&bootstrapProfile=owner"
        "&gatewayUrl=ws%3A%2F%2F127.0.0.1%3A18789")
ANSWER = {"ok": True, "url": f"http://127.0.0.1:18789/#token={TOKEN}", "httpUrl": "http://127.0.0.1:18789/",
          "wsUrl": "ws://127.0.0.1:18789", "port": 18789, "tokenIncluded": True, "browserUrl": LINK,
          "browserBootstrapExpiresAtMs": 1796594921358}


def test_only_the_one_time_link_leaves_never_the_shared_token() -> None:
    output = f"Config warnings: something\n{json.dumps(ANSWER)}\n".encode()
    link = parse(output)
    assert link == {"url": LINK, "expiresAtMs": 1796594921358, "httpUrl": "http://127.0.0.1:18789/", "port": 18789}
    assert TOKEN not in json.dumps(link)


@pytest.mark.parametrize(("output", "says"), [
    (b"", "printed no JSON answer"),
    (b'{"ok":false,"reason":"Gateway is not ready: startup-sidecars"}\n',
     "the gateway gave no login link: Gateway is not ready: startup-sidecars"),
    (json.dumps({**ANSWER, "browserUrl": None}).encode(), "no one-time browser link (browserUrl)"),
    (json.dumps({**ANSWER, "browserUrl": "javascript:alert(1)#bootstrapToken=x"}).encode(), "no one-time browser"),
])
def test_no_link_is_one_line_without_the_token(output: bytes, says: str) -> None:
    with pytest.raises(DashboardError) as raised:
        parse(output)
    assert raised.value.code == "FAILED" and says in raised.value.message and TOKEN not in raised.value.message


@pytest.mark.parametrize("field", ["browserUrl", "httpUrl"])
def test_a_link_that_carries_the_shared_token_never_leaves(field: str) -> None:
    register_secret(TOKEN)  # as the service does with the token it gives its gateway
    carrying = {**ANSWER, field: f"http://127.0.0.1:18789/?token={TOKEN}#bootstrapToken=x"}
    with pytest.raises(DashboardError) as raised:
        parse(json.dumps(carrying).encode())
    assert "carries the gateway token or a key" in raised.value.message and TOKEN not in raised.value.message


def test_before_any_gateway_the_service_has_no_link_to_give() -> None:
    with pytest.raises(DashboardError) as raised:
        Dashboard().issue()
    assert raised.value.code == "UNAVAILABLE"


def test_the_client_shows_the_link_and_how_to_reach_it_from_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setattr(client.socket, "gethostname", lambda: "box")
    text = client.render(parse(json.dumps(ANSWER).encode()))
    lines = text.splitlines()
    assert lines[1] == f"  {LINK}" and "ssh -N -L 18789:127.0.0.1:18789 alice@box" in text
    assert lines[-1].startswith("Later visits: http://127.0.0.1:18789/ (a new link: clawsvc dashboard)")
    assert TOKEN not in text


def test_install_links_clawsvc_onto_path_and_never_over_something_else(tmp_path: Path) -> None:
    venv_clawsvc = tmp_path / "venv" / "bin" / "clawsvc"
    venv_clawsvc.parent.mkdir(parents=True)
    venv_clawsvc.write_text("#!/bin/sh\n")
    link = tmp_path / "usr-local-bin" / "clawsvc"
    out = io.StringIO()
    closing.link_on_path((str(venv_clawsvc),), out, link=link, dry_run=True)
    assert not os.path.lexists(link) and f"would link {link} -> {venv_clawsvc}" in out.getvalue()
    closing.link_on_path((str(venv_clawsvc),), out, link=link)
    assert link.is_symlink() and os.readlink(link) == str(venv_clawsvc)
    closing.link_on_path((str(venv_clawsvc),), out, link=link)
    assert out.getvalue().splitlines()[-1] == f"path     {link} runs this clawsvc"
    link.unlink()
    link.write_text("#!/bin/sh\n# the admin's own\n")
    closing.link_on_path((str(venv_clawsvc),), out, link=link)
    assert link.read_text().endswith("the admin's own\n")
    assert out.getvalue().splitlines()[-1] == (f"path     {link} is another program: use this clawsvc as "
                                               f"{venv_clawsvc}, or replace that one by a link to it (ln -sf "
                                               f"{venv_clawsvc} {link})")
    closing.link_on_path(("/usr/bin/python3", "-m", "clawsvc"), out, link=link)
    assert out.getvalue().splitlines()[-1] == ("path     clawsvc is not a program here; run it as "
                                               "`/usr/bin/python3 -m clawsvc`")
