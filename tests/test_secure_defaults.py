"""Secure by default: no open backend API beyond loopback, keys of a safe length, secrets from files."""

import os
import subprocess
import sys

import pytest

from aether_tornado.config import SettingsError, is_loopback, load_settings

from .timing import scaled

KEY = "k" * 24

BEYOND_LOOPBACK = ["0.0.0.0", "::", "10.1.2.3", "example.org", ""]
HOSTS = ["--allowed-hosts", "ws.example.com"]


@pytest.mark.parametrize("host", BEYOND_LOOPBACK)
def test_listening_beyond_loopback_without_an_api_key_is_refused(host):
    with pytest.raises(SettingsError, match="--api-key"):
        load_settings(["--host", host, *HOSTS], {})
    assert load_settings(["--host", host, "--api-key", KEY, *HOSTS], {}).api_key == KEY
    assert load_settings(["--host", host, "--api-open", "true", *HOSTS], {}).api_key is None


@pytest.mark.parametrize("host", BEYOND_LOOPBACK)
def test_listening_beyond_loopback_without_the_server_s_host_names_is_refused(host):
    with pytest.raises(SettingsError, match="--allowed-hosts"):
        load_settings(["--host", host, "--api-key", KEY], {})
    assert load_settings(["--host", host, "--api-key", KEY, *HOSTS], {}).allowed_hosts == ("ws.example.com",)


@pytest.mark.parametrize("name", ["ws.example.com:443", "https://ws.example.com", "*.example.com", "a b", "[::1"])
def test_an_allowed_host_that_could_never_match_is_refused(name):
    with pytest.raises(SettingsError, match="is not a host name"):
        load_settings(["--allowed-hosts", f"ok.example,{name}"], {})


def test_host_names_are_kept_as_host_headers_name_them():
    settings = load_settings(["--allowed-hosts", "WS.Example.COM., [2001:DB8::1], *"], {})
    assert settings.allowed_hosts == ("ws.example.com", "[2001:db8::1]", "*")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    assert load_settings(["--host", host], {}).api_key is None


def test_the_process_refuses_to_start_with_one_line_that_names_the_flag():
    result = subprocess.run(
        [sys.executable, "-m", "aether_tornado", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=scaled(20),
        env={key: value for key, value in os.environ.items() if not key.startswith("AETHER_")},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "--api-key" in line and "--api-open" in line


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ([], {"AETHER_API_KEY": ""}),
        (["--api-key", ""], {}),
        (["--api-key", "short"], {}),
        ([], {"AETHER_API_KEY": " " * 20}),
    ],
)
def test_an_empty_or_short_api_key_is_an_error_not_no_key(argv, environ):
    with pytest.raises(SettingsError, match="api_key must be at least 16 characters"):
        load_settings(argv, environ)


def test_secrets_come_from_files_the_environment_s_file_or_a_systemd_credential(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "jwt").write_text("j" * 40)
    assert load_settings(["--api-key-file", str(tmp_path / "key")], {}).api_key == KEY
    settings = load_settings(
        [], {"AETHER_API_KEY_FILE": str(tmp_path / "key"), "AETHER_JWT_SECRET_FILE": str(tmp_path / "jwt")}
    )
    assert (settings.api_key, settings.jwt_secret) == (KEY, "j" * 40)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api_key").write_text(KEY)
    assert load_settings([], {"CREDENTIALS_DIRECTORY": str(credentials)}).api_key == KEY
    # A value given outright wins over a credential; a value and a file of one's own clash.
    assert load_settings(["--api-key", "v" * 16], {"CREDENTIALS_DIRECTORY": str(credentials)}).api_key == "v" * 16
    with pytest.raises(SettingsError, match="given twice"):
        load_settings(["--api-key", KEY, "--api-key-file", str(tmp_path / "key")], {})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(["--api-key-file", str(tmp_path / "missing")], {})


@pytest.mark.parametrize(
    "origin", ["*.c.com", "https://*.c.com", "c.com", "https://c.com/path", "ftp://c.com", "https://c.com:port"]
)
def test_an_allowed_origin_that_could_never_match_is_refused(origin):
    with pytest.raises(SettingsError, match="is not an origin"):
        load_settings(["--allowed-origins", f"https://ok.example,{origin}"], {})


def test_origins_are_kept_as_browsers_send_them():
    settings = load_settings(["--allowed-origins", "https://App.Example/,http://localhost:3000, *"], {})
    assert settings.allowed_origins == ("https://app.example", "http://localhost:3000", "*")


def test_a_read_only_key_needs_the_full_key_and_must_differ_from_it():
    with pytest.raises(SettingsError, match="api_read_key needs api_key"):
        load_settings(["--api-read-key", "r" * 16], {})
    with pytest.raises(SettingsError, match="must differ"):
        load_settings(["--api-key", KEY, "--api-read-key", KEY], {})
    with pytest.raises(SettingsError, match="api_read_key must be at least 16 characters"):
        load_settings(["--api-key", KEY, "--api-read-key", "short"], {})
    settings = load_settings(["--api-key", KEY], {"AETHER_API_READ_KEY": "r" * 16})
    assert settings.api_read_key == "r" * 16
