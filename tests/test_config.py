"""clawsvc.config: defaults, durations, the shipped example configs, and one precise error per bad config."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from clawsvc import config as cfg
from clawsvc.config import SCHEMA, Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "etc" / "clawsvc.yaml"
DEV = REPO / "etc" / "clawsvc-dev.yaml"


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def as_user(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "CLAWSVC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


# ---------------------------------------------------------------- defaults and durations

def test_defaults_match_the_contract(as_root):
    c = Config()
    g = c.gateway
    assert (g.command, g.port, g.bind, g.env, g.adopt_existing) == (("openclaw",), 18789, "loopback", {}, True)
    assert (g.state_dir, g.start_timeout, g.stop_timeout) == (Path("/var/lib/clawsvc/openclaw"), 120.0, 330.0)
    assert c.auth.token_file is None
    assert c.providers == ("anthropic", "openai", "google", "openrouter")
    cn = c.connection
    assert (cn.path, cn.request_timeout, cn.handshake_timeout, cn.ping_interval) == ("/", 30.0, 10.0, 30.0)
    h = c.health
    assert (h.interval, h.timeout, h.failures, h.tick_grace) == (30.0, 5.0, 3, 2.0)
    r = c.reconnect
    assert (r.base_delay, r.max_delay, r.max_attempts, r.stable_after) == (1.0, 30.0, 10, 60.0)
    assert (c.control.socket, c.control.group) == (Path("/run/clawsvc/control.sock"), None)
    lg = c.logging
    assert (lg.level, lg.gateway_stdout, lg.gateway_stderr, lg.suppress) == ("info", "debug", "warning", ())
    assert c.url == "ws://127.0.0.1:18789/"


def test_user_mode_defaults_follow_xdg(as_user, monkeypatch, tmp_path):
    assert Config().gateway.state_dir == as_user / ".local/state/clawsvc/openclaw"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    c = Config()
    assert c.gateway.state_dir == tmp_path / "state/clawsvc/openclaw"
    assert c.control.socket == tmp_path / "run/clawsvc/control.sock"


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1.5", 1.5), ("0.5s", 0.5),
    ("7", 7.0), ("12.25", 12.25), ("'45s'", 45.0), ("' 3 m '", 180.0),
])
def test_durations_parse(text, seconds):
    c = parse_config(f"gateway:\n  start_timeout: {text}\n")
    assert c.gateway.start_timeout == pytest.approx(seconds)


def test_zero_is_allowed_only_where_it_means_off():
    c = parse_config("connection:\n  ping_interval: 0\nreconnect:\n  base_delay: 0s\n  stable_after: 0\n")
    assert (c.connection.ping_interval, c.reconnect.base_delay, c.reconnect.stable_after) == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match=r"health\.interval: must be greater than 0"):
        parse_config("health:\n  interval: 0ms\n")


def test_values_are_normalised():
    c = parse_config("gateway:\n  command: node '/opt/my dir/openclaw.mjs'\n  bind: LAN\n  env: {A: 1, B: true}\n"
                     "logging:\n  level: DEBUG\n  suppress: ['^\\[bonjour\\]']\n")
    assert c.gateway.command == ("node", "/opt/my dir/openclaw.mjs")
    assert (c.gateway.bind, c.logging.level) == ("lan", "debug")
    assert dict(c.gateway.env) == {"A": "1", "B": "true"}
    assert c.logging.suppress[0].search("[bonjour] advertising")


def test_empty_files_and_sections_mean_defaults(as_root):
    assert parse_config("", "x.yaml") == Config(source=Path("x.yaml"))
    assert parse_config("# only a comment\n", "x.yaml") == Config(source=Path("x.yaml"))
    assert parse_config("health:\ngateway:\n", "x.yaml") == Config(source=Path("x.yaml"))


# ---------------------------------------------------------------- the shipped configs

@pytest.mark.parametrize("mode", ["as_root", "as_user"])
def test_example_equals_the_defaults(request, mode):
    request.getfixturevalue(mode)
    assert load_config(EXAMPLE) == Config(source=EXAMPLE)


def test_example_documents_every_key():
    text = EXAMPLE.read_text()
    for section, spec in SCHEMA.items():
        assert re.search(rf"^{section}:", text, re.M), section
        for key in spec if isinstance(spec, dict) else ():
            # set with its default, or (for paths that depend on root vs user) shown commented out
            assert re.search(rf"^  (# )?{key}:", text, re.M), f"{section}.{key} missing from {EXAMPLE.name}"


def test_dev_config_takes_the_provisioned_command():
    from clawsvc.commands.runtime.links import stable_command
    from clawsvc.commands.runtime.provision import config_snippet

    command = stable_command(Path("/opt/gw"))
    command_line = next(line for line in config_snippet(command).splitlines() if "command:" in line)
    text = DEV.read_text()
    assert text.count("  command: [openclaw]\n") == 1
    c = parse_config(text.replace("  command: [openclaw]", command_line), "dev.yaml")
    assert c.gateway.command == command
    assert c.gateway.port != Config().gateway.port
    assert c.control.socket != Config().control.socket
    assert c.gateway.state_dir.is_absolute() and c.control.socket.is_absolute()


# ---------------------------------------------------------------- bad configs: file, line, key, words

BAD = [
    # id, yaml, line, dotted key (None: no key applies), words the message must contain
    ("unknown-top", "gateway:\n  port: 1\ngatway: {}\n", 3, "gatway", ["unknown key", "did you mean gateway?"]),
    ("unknown-nested", "gateway:\n  port: 1\n  prot: 2\n", 3, "gateway.prot", ["did you mean gateway.port?"]),
    ("unknown-no-hint", "# c\nfrobnicate: 1\n", 2, "frobnicate", ["unknown key", "known keys: gateway"]),
    ("non-string-key", "health:\n  1: x\n", 2, "health.1", ["unknown key"]),
    ("port-0", "gateway:\n  bind: lan\n  port: 0\n", 3, "gateway.port", ["between 1 and 65535", "got 0"]),
    ("port-70000", "gateway:\n  port: 70000\n", 2, "gateway.port", ["between 1 and 65535", "70000"]),
    ("port-string", "gateway:\n  port: '18789'\n", 2, "gateway.port", ["expected an integer", "str"]),
    ("bool-for-int", "health:\n  interval: 30s\n  failures: yes\n", 3, "health.failures",
     ["expected an integer", "bool"]),
    ("float-for-int", "reconnect:\n  max_attempts: 2.5\n", 2, "reconnect.max_attempts", ["expected an integer"]),
    ("failures-0", "health:\n  failures: 0\n", 2, "health.failures", ["between 1 and 100", "got 0"]),
    ("negative-duration", "gateway:\n  start_timeout: -5\n", 2, "gateway.start_timeout", ["negative"]),
    ("negative-duration-str", "connection:\n  ping_interval: -1s\n", 2, "connection.ping_interval",
     ["expected a duration", "'-1s'"]),
    ("bad-duration-unit", "connection:\n  request_timeout: 30 seconds\n", 2, "connection.request_timeout",
     ["expected a duration", "30 seconds"]),
    ("duration-list", "gateway:\n  stop_timeout: [1]\n", 2, "gateway.stop_timeout", ["expected a duration", "list"]),
    ("duration-inf", "gateway:\n  stop_timeout: .inf\n", 2, "gateway.stop_timeout", ["finite"]),
    ("zero-interval", "health:\n  interval: 0\n", 2, "health.interval", ["greater than 0"]),
    ("max-below-base", "reconnect:\n  base_delay: 10s\n  max_delay: 5s\n", 3, "reconnect.max_delay",
     ["at least reconnect.base_delay (10s)", "got 5s"]),
    ("base-above-default-max", "# c\nreconnect:\n  base_delay: 1m\n", 3, "reconnect.base_delay",
     ["must not exceed reconnect.max_delay (30s, the default)", "got 60s"]),
    ("timeout-above-interval", "health:\n  interval: 10s\n  failures: 2\n  timeout: 11s\n", 4, "health.timeout",
     ["must not exceed health.interval (10s)", "got 11s"]),
    ("interval-below-default-timeout", "health:\n  interval: 2s\n", 2, "health.interval",
     ["at least health.timeout (5s, the default)"]),
    ("bad-bind", "gateway:\n  bind: everywhere\n", 2, "gateway.bind", ["loopback, lan, tailnet, auto", "everywhere"]),
    ("bad-level", "logging:\n  level: verbose\n", 2, "logging.level", ["debug, info", "verbose"]),
    ("bad-stderr-level", "logging:\n  gateway_stderr: 3\n", 2, "logging.gateway_stderr", ["expected one of"]),
    ("bad-regex", "logging:\n  suppress:\n    - ok\n    - '(['\n", 4, "logging.suppress[1]", ["not a valid regex"]),
    ("suppress-not-list", "logging:\n  suppress: noise\n", 2, "logging.suppress", ["expected a list"]),
    ("suppress-item-int", "logging:\n  suppress: [a, 5]\n", 2, "logging.suppress[1]", ["regex string", "int"]),
    ("empty-command", "gateway:\n  command: []\n", 2, "gateway.command", ["non-empty list"]),
    ("empty-command-str", "gateway:\n  command: ''\n", 2, "gateway.command", ["non-empty list"]),
    ("command-int-item", "gateway:\n  command:\n    - node\n    - 5\n", 4, "gateway.command[1]",
     ["non-empty string", "int"]),
    ("command-unclosed-quote", "gateway:\n  command: \"node 'x\"\n", 2, "gateway.command", ["No closing quotation"]),
    ("command-mapping", "gateway:\n  command: {node: x}\n", 2, "gateway.command", ["non-empty list"]),
    ("env-bad-name", "gateway:\n  env:\n    GOOD: 1\n    BAD-NAME: 2\n", 4, "gateway.env.BAD-NAME",
     ["not a valid environment variable name"]),
    ("env-list-value", "gateway:\n  env:\n    A: 1\n    B: [x]\n", 4, "gateway.env.B", ["expected a string", "list"]),
    ("env-null-value", "gateway:\n  env:\n    A:\n", 3, "gateway.env.A", ["expected a string", "null"]),
    ("env-not-mapping", "gateway:\n  env: [A=1]\n", 2, "gateway.env", ["mapping of NAME: value"]),
    ("env-token", "gateway:\n  env:\n    OPENCLAW_GATEWAY_TOKEN: abc\n", 3, "gateway.env.OPENCLAW_GATEWAY_TOKEN",
     ["auth.token_file"]),
    ("env-duplicate", "gateway:\n  env:\n    A: 1\n    A: 2\n", 4, "gateway.env.A", ["duplicate key", "line 3"]),
    ("providers-scalar", "providers: anthropic\n", 1, "providers", ["expected a list"]),
    ("providers-bad-name", "providers:\n  - openai\n  - Anthropic\n", 3, "providers[1]", ["not a provider name"]),
    ("providers-twice", "providers: [openai, openai]\n", 1, "providers[1]", ["listed twice"]),
    ("path-no-slash", "connection:\n  path: ws\n", 2, "connection.path", ["starting with '/'"]),
    ("adopt-string", "gateway:\n  adopt_existing: 'yes please'\n", 2, "gateway.adopt_existing", ["true or false"]),
    ("tick-grace-below-1", "health:\n  tick_grace: 0.5\n", 2, "health.tick_grace", ["at least 1"]),
    ("tick-grace-duration", "health:\n  tick_grace: 2s\n", 2, "health.tick_grace", ["expected a number"]),
    ("state-dir-int", "gateway:\n  state_dir: 5\n", 2, "gateway.state_dir", ["expected a path"]),
    ("token-file-list", "auth:\n  token_file: []\n", 2, "auth.token_file", ["expected a path"]),
    ("group-int", "control:\n  group: 5\n", 2, "control.group", ["group name"]),
    ("duplicate-key", "gateway:\n  port: 1\n  bind: lan\n  port: 2\n", 4, "gateway.port", ["duplicate", "line 2"]),
    ("duplicate-section", "health: {}\nauth: {}\nhealth: {}\n", 3, "health", ["duplicate", "line 1"]),
    ("section-scalar", "gateway: 5\n", 1, "gateway", ["mapping of settings", "'5'"]),
    ("section-list", "auth:\n  - token_file\n", 2, "auth", ["mapping of settings", "a list"]),
    ("top-level-list", "- gateway\n- auth\n", 1, None, ["mapping of sections", "a list"]),
    ("top-level-scalar", "just text\n", 1, None, ["mapping of sections"]),
    ("python-tag", "gateway:\n  port: !!python/object/apply:os.system [true]\n", 2, "gateway.port",
     ["cannot read value"]),
    ("yaml-tab", "gateway:\n\tport: 1\n", 2, None, ["YAML syntax error", "tabs"]),
    ("yaml-unclosed-bracket", "gateway:\n  command: [node,\n  port: 1\n", 2, None,
     ["YAML syntax error", "flow sequence started on line 2"]),
    ("yaml-unclosed-quote", "auth:\n  token_file: '/etc/x\n", 2, None, ["YAML syntax error", "quoted scalar"]),
    ("yaml-two-documents", "gateway: {}\n---\nauth: {}\n", 2, None, ["single document"]),
    ("yaml-bad-indent", "gateway:\n  port: 1\n    bind: lan\n", 3, None, ["YAML syntax error"]),
    # bounded: nothing huge is built or echoed, nothing absurd accepted
    ("port-400-digits", "gateway:\n  port: " + "9" * 400 + "\n", 2, "gateway.port",
     ["a number of 400 digits is out of range"]),
    ("port-5000-digits", "gateway:\n  port: " + "9" * 5000 + "\n", 2, "gateway.port", ["5000 digits"]),
    ("duration-400-digits", "health:\n  interval: " + "1" * 400 + "\n", 2, "health.interval", ["400 digits"]),
    ("duration-str-400-digits", "health:\n  interval: '" + "1" * 400 + "s'\n", 2, "health.interval",
     ["at most 1 day", "…"]),
    ("duration-over-a-day", "gateway:\n  stop_timeout: 25h\n", 2, "gateway.stop_timeout", ["at most 1 day"]),
    ("duration-1e300", "gateway:\n  stop_timeout: 1.0e+300\n", 2, "gateway.stop_timeout", ["at most 1 day"]),
    ("duration-days-unit", "gateway:\n  stop_timeout: 10000d\n", 2, "gateway.stop_timeout", ["expected a duration"]),
    ("duration-nan", "gateway:\n  stop_timeout: .nan\n", 2, "gateway.stop_timeout", ["finite"]),
    ("failures-1000", "health:\n  failures: 1000\n", 2, "health.failures", ["between 1 and 100"]),
    ("max-attempts-huge", "reconnect:\n  max_attempts: 10001\n", 2, "reconnect.max_attempts", ["between 0 and 10000"]),
    ("tick-grace-huge", "health:\n  tick_grace: 101\n", 2, "health.tick_grace", ["at most 100"]),
    ("tick-grace-nan", "health:\n  tick_grace: .nan\n", 2, "health.tick_grace", ["at least 1"]),
    ("state-dir-nul", "gateway:\n  state_dir: \"/var/a\\0b\"\n", 2, "gateway.state_dir", ["NUL"]),
    ("token-file-newline", "auth:\n  token_file: \"/etc/a\\nb\"\n", 2, "auth.token_file", ["line break"]),
    ("path-too-long", "gateway:\n  state_dir: /" + "d" * 5000 + "\n", 2, "gateway.state_dir", ["at most 4095 bytes"]),
    ("socket-too-long", "control:\n  socket: /run/" + "s" * 200 + "\n", 2, "control.socket", ["at most 107 bytes"]),
    ("command-nul", "gateway:\n  command: [node, \"a\\0b\"]\n", 2, "gateway.command[1]", ["NUL"]),
    ("env-nul", "gateway:\n  env:\n    A: \"a\\0b\"\n", 3, "gateway.env.A", ["NUL"]),
    ("ws-path-space", "connection:\n  path: '/a b'\n", 2, "connection.path", ["without spaces"]),
    ("group-colon", "control:\n  group: 'a:b'\n", 2, "control.group", ["no spaces, colons"]),
    ("alias-bomb", "gateway:\n  command:\n    - &a [x, x, x, x, x, x, x, x, x, x]\n"
     "    - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n    - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     "    - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n    - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
     6, "gateway.command[3]", ["expands through YAML aliases"]),
    ("alias-recursive", "gateway:\n  command: &a [x, *a]\n", 2, "gateway.command[1]", ["recursive"]),
    ("too-deep", "gateway:\n  command: " + "[" * 100 + "]" * 100 + "\n", 2, None, ["nested more than 64 levels"]),
    ("too-many-values", "providers:\n" + "  - p\n" * 10_001, 9_999, None, ["more than 10000 values"]),
    ("raw-nul", "gateway:\n  port: 1\0\n", 2, None, ["YAML syntax error", "#x0000"]),
    ("long-unknown-key", "gateway:\n  " + "k" * 1000 + ": 1\n", 2, "gateway." + "k" * 60 + "…", ["unknown key"]),
    ("long-bad-value", "gateway:\n  bind: " + "x" * 5000 + "\n", 2, "gateway.bind", ["x" * 60 + "'…"]),
    ("bad-tagged-int", "gateway:\n  port: !!int abc\n", 2, "gateway.port", ["cannot read value"]),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_file_line_and_key(text, line, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/clawsvc/x.yaml")
    message = str(caught.value)
    prefix = f"/etc/clawsvc/x.yaml:{line}:" + (f" {key}: " if key else " ")
    assert message.startswith(prefix), message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_no_error_message_is_long():
    for _, text, *_ in BAD:
        with pytest.raises(ConfigError) as caught:
            parse_config(text, "/etc/clawsvc/x.yaml")
        assert len(str(caught.value)) < 400, str(caught.value)


def test_bounds_that_are_still_fine():
    c = parse_config("gateway:\n  stop_timeout: 24h\n  port: 65535\nhealth:\n  failures: 100\n  tick_grace: 100\n"
                     "reconnect:\n  max_attempts: 10000\ncontrol:\n  socket: /" + "s" * 106 + "\n")
    assert (c.gateway.stop_timeout, c.health.failures, c.reconnect.max_attempts) == (86400.0, 100, 10000)
    assert len(str(c.control.socket)) == 107


def test_bad_table_is_distinct():
    assert len({case[1] for case in BAD}) == len(BAD) >= 25


# ---------------------------------------------------------------- default path resolution and reading

def test_config_path_from_environment(monkeypatch, as_user, tmp_path):
    monkeypatch.setenv("CLAWSVC_CONFIG", str(tmp_path / "env.yaml"))
    assert cfg.default_config_path() == tmp_path / "env.yaml"


def test_config_path_as_root(monkeypatch, as_root):
    monkeypatch.delenv("CLAWSVC_CONFIG", raising=False)
    assert cfg.default_config_path() == Path("/etc/clawsvc/clawsvc.yaml")
    monkeypatch.setenv("CLAWSVC_CONFIG", "")  # empty counts as unset
    assert cfg.default_config_path() == Path("/etc/clawsvc/clawsvc.yaml")


def test_config_path_as_user_follows_xdg(monkeypatch, as_user, tmp_path):
    assert cfg.default_config_path() == as_user / ".config/clawsvc/clawsvc.yaml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cfg.default_config_path() == tmp_path / "xdg/clawsvc/clawsvc.yaml"


def test_explicit_path_beats_environment(monkeypatch, as_user, tmp_path):
    named, from_env = tmp_path / "named.yaml", tmp_path / "env.yaml"
    named.write_text("gateway:\n  port: 1111\n")
    from_env.write_text("gateway:\n  port: 2222\n")
    monkeypatch.setenv("CLAWSVC_CONFIG", str(from_env))
    assert load_config(named).gateway.port == 1111
    assert load_config().gateway.port == 2222


def test_default_file_is_read_when_present(monkeypatch, as_user, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert load_config() == Config(source=None)  # absent default file: built-in defaults
    target = tmp_path / "xdg/clawsvc/clawsvc.yaml"
    target.parent.mkdir(parents=True)
    target.write_text("gateway:\n  port: 3333\n")
    loaded = load_config()
    assert (loaded.gateway.port, loaded.source) == (3333, target)


def test_named_file_must_exist(monkeypatch, as_user, tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    monkeypatch.setenv("CLAWSVC_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"gone\.yaml: config file not found"):
        load_config()


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"config file .*fifo\.yaml is a FIFO, not a regular file"):
        load_config(fifo)


def test_a_device_is_refused():
    with pytest.raises(ConfigError, match=r"^config file /dev/zero is a character device, not a regular file"):
        load_config("/dev/zero")


def test_a_file_over_1_mib_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("gateway:\n  port: 1234\n" + "#" * cfg.MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=r"config file .*big\.yaml is larger than 1024 KiB"):
        load_config(big)
    big.write_text("gateway:\n  port: 1234\n" + "#" * (cfg.MAX_CONFIG_BYTES - 100))
    assert load_config(big).gateway.port == 1234


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file: IsADirectoryError"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"gateway:\n  port: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml: cannot read config file: UnicodeDecodeError"):
        load_config(binary)


# ---------------------------------------------------------------- effective config and reload diff

def test_dump_round_trips_and_redacts_secrets(tmp_path):
    text = ("gateway:\n  port: 4000\n  env: {MY_API_KEY: sk-live-123456, DB_PASSWORD: hunter22, PLAIN: shown}\n"
            "health:\n  interval: 250ms\n  timeout: 100ms\nlogging:\n  suppress: ['^x']\ncontrol:\n  group: adm\n")
    original = parse_config(text)
    dumped = cfg.dump(original)
    assert "sk-live-123456" not in dumped and "hunter22" not in dumped
    env = yaml.safe_load(dumped)["gateway"]["env"]
    assert env == {"MY_API_KEY": cfg.REDACTED, "DB_PASSWORD": cfg.REDACTED, "PLAIN": "shown"}
    again = parse_config(cfg.dump(parse_config(text.replace("MY_API_KEY: sk-live-123456, DB_PASSWORD: hunter22, ",
                                                            ""))))
    assert again.gateway == dataclasses.replace(original.gateway, env={"PLAIN": "shown"})
    assert (again.health, again.logging, again.control) == (original.health, original.logging, original.control)


def test_gateway_affecting_changes():
    old = parse_config("gateway:\n  port: 1000\n")
    assert cfg.gateway_affecting(old, parse_config("gateway:\n  port: 1000\nhealth:\n  failures: 9\n")) == []
    new = parse_config("gateway:\n  port: 1001\nproviders: []\nconnection:\n  path: /ws\n")
    assert cfg.gateway_affecting(old, new) == ["gateway.port", "providers", "connection.path"]
