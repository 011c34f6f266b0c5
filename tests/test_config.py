"""Config validation, location building, glob rules and request fields: the pure core."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import cdn_push
from cdn_push import ConfigError

BASE = {"folder": "drop", "origin": {"base_url": "https://files.example.com/videos"}}


def parse(data, env=None, base_dir=Path("/srv")):
    return cdn_push.parse_config(data, env=env or {}, base_dir=base_dir)


def with_(section, **values):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    if section is None:
        data.update(values)
    else:
        data.setdefault(section, {}).update(values)
    return data


@pytest.mark.parametrize("data, key_in_message", [
    ({}, "'folder' is required"),
    ([1, 2], "must be a mapping"),
    (with_(None, foldr="x"), "unknown key 'foldr' (did you mean 'folder'?)"),
    (with_("api", pasword="x"), "unknown key 'api.pasword' (did you mean 'api.password'?)"),
    (with_("api", retry={"atempts": 3}), "unknown key 'api.retry.atempts'"),
    (with_("scan", settle="x"), "unknown key 'scan.settle'"),
    (with_("api", url="ftp://cp.example.com/api2"), "'api.url' must be an http(s) URL"),
    (with_("api", url="https://me:pw@cp.example.com/api2"), "'api.url' must not hold a login"),
    (with_("api", timeout="slow"), "'api.timeout' must be a number"),
    (with_("api", timeout=0), "'api.timeout' must be at least"),
    (with_("api", verify_tls="yes"), "'api.verify_tls' must be true or false"),
    (with_("api", retry={"attempts": 0}), "'api.retry.attempts' must be at least 1"),
    (with_("api", retry={"attempts": 2.5}), "'api.retry.attempts' must be a whole number"),
    (with_("origin", base_url="gopher://x/y"), "'origin.base_url' must start with one of"),
    (with_("origin", base_url="https:///nohost"), "'origin.base_url' has no host"),
    (with_("origin", base_url="s3://endpoint.example.com/bucket"), "s3:// needs origin.username"),
    (with_("origin", base_url="rsync+ssh://host/path"), "rsync+ssh:// needs origin.username"),
    (with_("origin", password="x"), "'origin.password' is set but 'origin.username' is not"),
    (with_(None, name_prefix="/videos/"), "'name_prefix' must not start with '/'"),
    (with_(None, defaults={"speed": "fast"}), "'defaults.speed' must look like 300K"),
    (with_(None, defaults={"buffer": "5s"}), "'defaults.buffer' must be seconds"),
    (with_(None, defaults={"no_replace": "yes"}), "'defaults.no_replace' must be true or false"),
    (with_(None, defaults={"colour": "red"}), "unknown key 'defaults.colour'"),
    (with_(None, rules={"match": "*"}), "'rules' must be a list"),
    (with_(None, rules=[{"speed": "1M"}]), "'rules[0].match' is required"),
    (with_(None, rules=[{"match": "*.mp4", "sped": "1M"}]), "unknown key 'rules[0].sped'"),
    (with_("scan", include="*.mp4"), None),
    (with_("scan", include=[""]), "'scan.include' must be a list of glob patterns"),
    (with_("scan", settle_seconds=-1), "'scan.settle_seconds' must be at least 0"),
    (with_(None, ledger="drop/ledger.db"), "must not be inside 'folder'"),
    (with_(None, workers={"hash": 0}), "'workers.hash' must be at least 1"),
    (with_(None, workers="many"), "'workers' must be a mapping"),
])
def test_invalid_configs_name_the_key(data, key_in_message):
    if key_in_message is None:
        parse(data)
        return
    with pytest.raises(ConfigError) as error:
        parse(data)
    assert key_in_message in str(error.value)


def test_defaults_and_relative_paths():
    config = parse(BASE, base_dir=Path("/srv/cdn"))
    assert config.folder == Path("/srv/cdn/drop")
    assert config.ledger == Path("/srv/cdn/cdn-push.ledger.sqlite3")
    assert config.api.url == cdn_push.DEFAULT_API_URL
    assert config.api.callback_param == "callback"
    assert config.api.verify_tls is True
    assert config.scan.skip_hidden and config.scan.skip_temporary and not config.scan.follow_symlinks
    assert config.hash_workers >= 1 and config.submit_workers == 4
    assert config.defaults == {} and config.rules == ()


def test_environment_passwords_win_over_the_file():
    data = with_("api", password="from-file", login="me")
    data["origin"].update(username="u", password="origin-file")
    config = parse(data, env={cdn_push.ENV_API_PASSWORD: "from-env",
                              cdn_push.ENV_ORIGIN_PASSWORD: "origin-env"})
    assert config.api.password.reveal() == "from-env"
    assert config.origin.password.reveal() == "origin-env"
    assert "from-env" not in repr(config) and "origin-env" not in repr(config)


def test_credentials_inside_base_url_are_taken_apart():
    config = parse(with_("origin", base_url="ftp://us%40er:p%3Ass@ftp.example.com:2121/in"))
    assert config.origin.base_url == "ftp://ftp.example.com:2121/in"
    assert config.origin.username == "us@er"
    assert config.origin.password.reveal() == "p:ss"


def test_workers_as_one_number_sets_both():
    config = parse(with_(None, workers=3))
    assert (config.hash_workers, config.submit_workers) == (3, 3)


def test_load_config_reports_file_and_line_of_yaml_errors(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("folder: x\napi:\n  login: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        cdn_push.load_config(path, {})
    assert str(path) in str(error.value) and "line" in str(error.value)


MISSING_COLON = "a line that is not 'key: value': the ':' after the key is missing"


@pytest.mark.parametrize("text, line, words", [
    ("api:\n  url: x\n  auth basic\n  # Seconds to wait for one answer.\n  timeout: 30\n", 3, MISSING_COLON),
    ('name_prefix ""\n# a comment\nfolder: /x\n', 1, MISSING_COLON),
    ("workers:\n  hash 2\n\n  submit: 4\n", 2, MISSING_COLON),
    ("api:\n  url: http://a: b\n", 2, "a ':' where a value was expected"),     # a colon too many: its own line
    ("name_prefix: a\n  b\napi:\n  url: http://a: b\n", 4, "a ':' where a value was expected"),  # a value on two lines is no slip
    ("folder: /x\nscan:\n  settle_seconds: 5\n  mistake here\nworkers:\n  hash: 2\n", 4, MISSING_COLON),
    ("banner: |\n  hello world\nbad: key: value\n", 3, "a ':' where a value was expected"),   # a block's text
    ("note: a long\n  value wrapped\n  timeout: 30\n", 3, "a ':' where a value was expected"),  # a wrapped value
], ids=["in-section-before-comment", "top-level", "before-blank", "colon-in-value", "two-line-value",
        "last-in-section", "block-text", "wrapped-value"])
def test_a_key_without_its_colon_is_shown_on_its_own_line(tmp_path, text, line, words):
    """PyYAML reads such a line on into the next ones: the message names the line itself."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        cdn_push.load_config(path, {})
    assert f"{path}: line {line}, column" in str(error.value) and words in str(error.value), str(error.value)


def test_load_config_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as error:
        cdn_push.load_config(tmp_path / "nope.yaml", {})
    assert "config.example.yaml" in str(error.value)


def test_load_config_prefixes_the_file_and_defaults_ledger_beside_it(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("folder: drop\nschedule: hourly\n")
    with pytest.raises(ConfigError, match=r"site\.yaml: line 2: unknown key 'schedule'"):
        cdn_push.load_config(path, {})
    path.write_text("folder: drop\n")
    config, warnings = cdn_push.load_config(path, {})
    assert config.ledger == tmp_path / "site.ledger.sqlite3"
    assert warnings == []


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o640, True), (0o644, True)])
def test_warns_when_a_password_file_is_readable_by_others(tmp_path, mode, warned):
    path = tmp_path / "config.yaml"
    path.write_text("folder: drop\napi:\n  password: hunter2-long\n")
    path.chmod(mode)
    _, warnings = cdn_push.load_config(path, {})
    assert bool(warnings) is warned
    assert all("hunter2" not in w for w in warnings)


# In a section, a commented-out setting: "  # key: one-word-value", or "  # key:" opening a block whose
# lines follow as "  #   key: value". Prose comments never match: capitalised, or more than one word after ":".
COMMENTED_SETTING = re.compile(r"^(?P<indent> +)# (?P<setting> *[a-z_]+:(?: \S+)?)$")


def switched_on(text: str) -> str:
    """config.example.yaml with its commented-out settings (origin.serve, monitor.listen) switched on."""
    lines = []
    for line in text.splitlines():
        found = COMMENTED_SETTING.match(line)
        lines.append(found["indent"] + found["setting"] if found else line)
    return "\n".join(lines) + "\n"


def key_differences(documented: Any, known: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of CONFIG_KEYS missing from `documented`, and keys `documented` has that CONFIG_KEYS lacks,
    at every depth."""
    if not isinstance(documented, dict):
        return [f"{prefix.rstrip('.')} is {documented!r}, not a section with {', '.join(known)}"]
    differences = [f"missing {prefix}{key}" for key in known
                   if key not in documented and f"{prefix}{key}" not in cdn_push.CONFIG_ALIASES]
    differences += [f"unknown {prefix}{key}" for key in documented if key not in known]
    for key, inner in known.items():
        if isinstance(inner, dict) and key in documented:
            differences += key_differences(documented[key], inner, f"{prefix}{key}.")
    return differences


def test_example_config_is_valid_and_complete():
    example = Path(cdn_push.__file__).with_name("config.example.yaml")
    config, _ = cdn_push.load_config(example, {})             # valid as shipped
    assert config.folder.name
    documented = yaml.safe_load(switched_on(example.read_text()))
    assert documented["origin"]["serve"] and documented["monitor"]["listen"]   # the commented-out ones were read
    assert not key_differences(documented, cdn_push.CONFIG_KEYS), key_differences(documented, cdn_push.CONFIG_KEYS)
    # The commented-out settings are valid too, once switched on ("remove base_url above" for serve).
    del documented["origin"]["base_url"]
    del documented["api"]["password_file"]      # names a file of the operator's machine
    serving = cdn_push.parse_config(documented, env={}, base_dir=example.parent)
    assert serving.origin.serve is not None and serving.monitor.listen_port == 8765


@pytest.mark.parametrize("listen, host, port", [
    ("127.0.0.1:8765", "127.0.0.1", 8765), ("127.0.0.2:9000", "127.0.0.2", 9000), ("[::1]:8766", "::1", 8766),
    ("localhost:8767", "localhost", 8767),
])
def test_a_loopback_monitor_listen_is_accepted_as_written(listen, host, port):
    """Loopback needs no allow_remote: the address is kept as written, with or without allow_remote: false.
    (Its counterpart, a remote address refused without allow_remote, is in test_monitor.py.)"""
    for extra in ({}, {"allow_remote": False}):
        monitor = parse(with_("monitor", listen=listen, **extra)).monitor
        assert (monitor.listen_host, monitor.listen_port, monitor.allow_remote, monitor.chosen) == (
            host, port, False, True)
    off = parse(with_("monitor", listen=None)).monitor          # null: no monitor, said on purpose
    assert (off.listen_host, off.chosen) == (None, True)
    default = parse(BASE).monitor                                # left out: 127.0.0.1:8765, not chosen
    assert (default.listen_host, default.listen_port, default.chosen) == ("127.0.0.1", 8765, False)


@pytest.mark.parametrize("text, line", [
    ("folder: d\nscan:\n  settle_seconds: 3\n  setle_seconds: 5\n", 4),
    ("folder: d\nrules:\n  - match: a\n  - match: b\n    speed: fast\n", 5),
    ("folder: d\napi:\n  retry:\n    attempts: many\n", 4),
])
def test_config_errors_name_the_line_of_the_key(tmp_path, text, line):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"c\.yaml: line {line}: "):
        cdn_push.load_config(path, {})


def test_reload_names_the_settings_that_changed():
    old = parse(with_(None))
    new = parse(with_("api", rate_limit=5, login="other"))
    assert cdn_push.config_changes(old, new) == ["api.login", "api.rate_limit"]


# -- api.password_file and api.auth (issue 20) ------------------------------------------------------------

def with_password_file(path, **api):
    return with_("api", password_file=str(path), **api)


@pytest.mark.parametrize("content, expected", [
    ("file-Pa55word\n", "file-Pa55word"),
    ("file-Pa55word", "file-Pa55word"),
    ("file-Pa55word\r\n", "file-Pa55word"),
    ("  spaces kept  \n", "  spaces kept  "),
])
def test_password_file_is_read_and_its_line_end_stripped(tmp_path, content, expected):
    path = tmp_path / "api-password"
    path.write_text(content, newline="")
    path.chmod(0o600)
    config = parse(with_password_file(path), base_dir=tmp_path)
    assert config.api.password.reveal() == expected
    assert config.api.password_file == str(path) and str(path) in config.api.password_from
    assert expected not in repr(config)


def make_password_file(tmp_path, kind):
    path = tmp_path / "api-password"
    if kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)                       # no writer: an open without O_NONBLOCK would hang here
    elif kind == "two lines":
        path.write_text("first-line\nsecond-line\n")
    elif kind == "empty":
        path.write_text("\n")
    elif kind == "too long":
        path.write_text("x" * 5000 + "\n")
    elif kind == "not utf-8":
        path.write_bytes(b"\xff\xfe-pass\n")
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "two lines", "empty", "too long", "not utf-8"])
def test_a_bad_password_file_is_a_config_error_naming_key_and_path(tmp_path, kind):
    path = make_password_file(tmp_path, kind)
    outcome: list[BaseException | cdn_push.Config] = []

    def read() -> None:
        try:
            outcome.append(parse(with_password_file(path), base_dir=tmp_path))
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)      # a FIFO must not block the config's reading
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), f"reading a {kind} api.password_file blocked"
    assert isinstance(outcome[0], ConfigError), outcome
    message = str(outcome[0])
    assert "api.password_file" in message and str(path) in message, message
    assert "second-line" not in message and "first-line" not in message


def test_a_symlinked_password_file_is_a_config_error(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("linked-Pa55word\n")
    target.chmod(0o600)
    link = tmp_path / "api-password"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as error:
        parse(with_password_file(link), base_dir=tmp_path)
    assert "api.password_file" in str(error.value) and str(link) in str(error.value)


def test_password_and_password_file_together_are_an_error(tmp_path):
    path = tmp_path / "api-password"
    path.write_text("file-Pa55word\n")
    with pytest.raises(ConfigError, match=r"'api\.password' or 'api\.password_file', not both"):
        parse(with_password_file(path, password="inline-Pa55word"), base_dir=tmp_path)


def test_the_environment_wins_over_the_password_file(tmp_path):
    path = tmp_path / "api-password"
    path.write_text("file-Pa55word\n")
    config = parse(with_password_file(path), env={cdn_push.ENV_API_PASSWORD: "env-Pa55word"}, base_dir=tmp_path)
    assert config.api.password.reveal() == "env-Pa55word"
    assert config.api.password_from == f"{cdn_push.ENV_API_PASSWORD} (which wins over api.password_file)"


@pytest.mark.parametrize("api, origin, told", [
    ("  password: hunter2-long\n", "", ["CDN_PUSH_API_PASSWORD"]),
    ("", "  password: hunter2-long\n", ["CDN_PUSH_ORIGIN_PASSWORD"]),
    ("", "  base_url: http://me:hunter2-long@files.example.net/v\n", ["CDN_PUSH_ORIGIN_PASSWORD"]),
    ("  password: hunter2-long\n", "  password: hunter2-long\n", ["CDN_PUSH_API_PASSWORD", "CDN_PUSH_ORIGIN_PASSWORD"]),
], ids=["api", "origin", "origin-url", "both"])
def test_a_readable_config_holding_a_password_names_the_variable_for_that_password(tmp_path, api, origin, told):
    path = tmp_path / "config.yaml"
    path.write_text(f"folder: drop\napi:\n  login: me\n{api}origin:\n  username: me\n{origin}")
    path.chmod(0o644)
    _, warnings = cdn_push.load_config(path, {})
    about = [w for w in warnings if "holds a password" in w]
    assert len(about) == 1 and f"({' or '.join(told)}; for the service" in about[0], warnings


@pytest.mark.parametrize("env, told", [({cdn_push.ENV_API_PASSWORD: "short"}, "the password from CDN_PUSH_API_PASSWORD"),
                                       ({cdn_push.ENV_ORIGIN_PASSWORD: "short"}, "the password from CDN_PUSH_ORIGIN_PASSWORD"),
                                       ({}, "the password from 'api.password'"),
                                       ({"url": 1}, "the password from 'origin.base_url'")])
def test_a_short_password_is_named_by_where_it_came_from(tmp_path, env, told):
    path = tmp_path / "config.yaml"
    origin = "  base_url: http://me:short@files.example.net/v\n" if env.pop("url", None) else "  username: me\n"
    path.write_text(f"folder: drop\napi:\n  password: short\norigin:\n{origin}")
    path.chmod(0o600)
    _, warnings = cdn_push.load_config(path, env)
    assert any(w.startswith(f"{told} is shorter than 8 characters") for w in warnings), warnings


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True), (0o604, True)])
def test_load_config_warns_about_a_password_file_others_can_read(tmp_path, mode, warned):
    secret = tmp_path / "api-password"
    secret.write_text("file-Pa55word\n")
    secret.chmod(mode)
    path = tmp_path / "config.yaml"
    path.write_text(f"folder: drop\napi:\n  password_file: {secret}\n")
    path.chmod(0o600)
    config, warnings = cdn_push.load_config(path, {})
    assert config.api.password.reveal() == "file-Pa55word"
    about = [w for w in warnings if str(secret) in w]
    assert bool(about) is warned, warnings
    assert all("file-Pa55word" not in w for w in warnings)
    if warned:
        assert "api.password_file" in about[0] and f"chmod 600 {secret}" in about[0]


@pytest.mark.parametrize("auth, expected", [(None, "basic"), ("", "basic"), ("basic", "basic"), ("otp", "otp")])
def test_api_auth_is_basic_or_otp(auth, expected):
    data = with_("api") if auth is None else with_("api", auth=auth)
    assert parse(data).api.auth == expected


@pytest.mark.parametrize("auth", ["OTP", "digest", " otp", 1, ["otp"]])
def test_any_other_api_auth_is_a_config_error(auth):
    with pytest.raises(ConfigError, match=r"api\.auth"):
        parse(with_("api", auth=auth))


# -- config errors never show a password (issue 20) --------------------------------------------------------

@pytest.mark.parametrize("line, shown", [
    ("  password: hunter22pass", "  password: ***"),
    ('  password: "hunter22pass', "  password: ***"),
    ("\tpassword: hunter22pass", "\tpassword: ***"),
    ('  "password": "hunter22pass"', '  "password": ***'),
    ("  - password: hunter22pass", "  - password: ***"),
    ("  Password: hunter22pass", "  Password: ***"),
    ("  secret_file: /etc/cdn-push/secret", "  secret_file: ***"),
    ("  api_token: abc123abc123", "  api_token: ***"),
    ("  base_url: https://user:Url-Pa55@host.example.com/x", "  base_url: https://user:***@host.example.com/x"),
    ("  base_url: ftp://u:p%40ss@h:21/in", "  base_url: ftp://u:***@h:21/in"),
    ("  base_url: https://host.example.com/x", "  base_url: https://host.example.com/x"),
    ("  login: me@example.com", "  login: me@example.com"),
    ("  timeout: 30", "  timeout: 30"),
    # flow mappings: the value alone is masked, the rest of the line stays for the error's caret
    ("api: {login: me, password: hunter22pass, timeout: [5}", "api: {login: me, password: ***, timeout: [5}"),
    ('api: {password: "hun,ter}22", login: me}', "api: {password: ***, login: me}"),
    ("origin: {username: u, password: 'a,b', base_url: https://u:pw@h/x}",
     "origin: {username: u, password: ***, base_url: https://u:***@h/x}"),
])
def test_masked_yaml_line(line, shown):
    assert cdn_push.masked_yaml_line(line) == shown


@pytest.mark.parametrize("text, secret", [
    ('folder: drop\napi:\n  login: me\n  password: "hunter22pass\n  timeout: 5\n', "hunter22pass"),
    ('folder: drop\napi:\n  login: me\n  password: "hunter22pass\n', "hunter22pass"),
    ("folder: drop\napi:\n  login: me\n\tpassword: hunter22pass\n", "hunter22pass"),
    ("folder: drop\napi:\n  password:\thunter22pass\n  login: [x\n", "hunter22pass"),
    ("folder: drop\norigin:\n  username: u\n  password: hunter22pass: x\n", "hunter22pass"),
    ('folder: drop\norigin:\n  base_url: "https://user:Url-Pa55word@host.example.com/x\n', "Url-Pa55word"),
    ("folder: drop\norigin:\n  base_url: https://user:Url-Pa55word@host.example.com/x: y\n", "Url-Pa55word"),
])
def test_a_yaml_error_on_a_secret_line_does_not_show_the_secret(tmp_path, text, secret):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        cdn_push.load_config(path, {})
    message = str(error.value)
    assert str(path) in message and "line" in message and "|" in message, message   # the line is still shown
    assert secret not in message, message
    assert cdn_push.MASK in message, message


def test_a_yaml_error_in_a_flow_mapping_does_not_show_the_password(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("folder: drop\napi: {login: me, password: hunter22pass, timeout: [5}\n")
    with pytest.raises(ConfigError) as error:
        cdn_push.load_config(path, {})
    assert "hunter22pass" not in str(error.value), str(error.value)


# -- monitor.allowed_hosts (issue 20) -------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, ()), ([], ()), ("status.example.com", ("status.example.com",)),
    (["Status.Example.COM", "proxy"], ("status.example.com", "proxy")),
])
def test_monitor_allowed_hosts(value, expected):
    data = with_("monitor") if value is None else with_("monitor", allowed_hosts=value)
    assert parse(data).monitor.allowed_hosts == expected


@pytest.mark.parametrize("value", [["evil example"], ["a/b"], [""], [5], {"a": 1}, ["-dash.example"]])
def test_bad_monitor_allowed_hosts_are_a_config_error(value):
    with pytest.raises(ConfigError, match=r"monitor\.allowed_hosts"):
        parse(with_("monitor", allowed_hosts=value))


@pytest.mark.parametrize("text, key, first, second", [
    ("folder: /tmp/a\napi:\n  login: x\nfolder: /tmp/b\n", "folder", 1, 4),
    ("folder: /tmp/a\norigin:\n  base_url: http://h/\n  username: u\n  base_url: http://g/\n", "base_url", 3, 5),
    ("folder: /tmp/a\norigin:\n  base_url: http://h/\norigin:\n  serve: {listen: '127.0.0.1:1'}\n", "origin", 2, 4),
])
def test_a_key_set_twice_is_an_error_naming_both_lines(tmp_path, text, key, first, second):
    """PyYAML keeps the last of two equal keys without a word; a pasted block must not replace another."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(cdn_push.ConfigError) as caught:
        cdn_push.load_config(path, {})
    assert f"line {second}: '{key}' is set twice (also on line {first})" in str(caught.value), caught.value


def test_the_same_key_in_two_sections_is_fine(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("folder: /tmp/a\napi:\n  password: x12345678\norigin:\n  base_url: http://h/\n"
                    "  username: u\n  password: y12345678\n")
    config, _ = cdn_push.load_config(path, {})
    assert config.origin.password.reveal() == "y12345678" and config.api.password.reveal() == "x12345678"


@pytest.mark.parametrize("api_url, public_url, warned", [
    ("https://cp.cdn.example.net/api2", "http://127.0.0.1:8080", True),
    ("https://cp.cdn.example.net/api2", "http://192.168.1.20:8080", True),
    ("https://cp.cdn.example.net/api2", "https://push.example.org:8080", False),
    ("http://127.0.0.1:9000/api2", "http://127.0.0.1:8080", False),       # a CDN on this machine (the emulator)
])
def test_a_local_public_url_for_a_remote_cdn_is_a_warning(api_url, public_url, warned):
    config = cdn_push.parse_config({"folder": "/tmp/drop", "api": {"url": api_url},
                                    "origin": {"serve": {"listen": "0.0.0.0:8080", "public_url": public_url}}},
                                   env={}, base_dir=Path("/tmp"))
    found = cdn_push.unreachable_public_urls(config)
    assert bool(found) == warned and all("origin.serve.public_url" in line for line in found), found
