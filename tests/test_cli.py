"""gatewayctl: every command, its output, and one clean error line (exit 1) on bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from gatewayctl.cli.main import app
from gatewayctl.proxy import app as proxy_app
from gatewayctl.proxy.config import load_config
from gatewayctl.proxy.credentials import hash_api_key, verify_password
from gatewayctl.proxy.ledger import Ledger, UsageRecord
from typer.testing import CliRunner

REPO_USERS_TOML = Path(__file__).resolve().parents[1] / "users.toml"
GATEWAYCTL = Path(sys.executable).with_name("gatewayctl")
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GATEWAYCTL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # a default ./users.toml never means the repo's


def run(*args: object, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


def ok(*args: object, **kwargs: Any) -> str:
    result = run(*args, **kwargs)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(*args: object, **kwargs: Any) -> str:
    """Runs a command that must fail cleanly; returns its one error line."""
    result = run(*args, **kwargs)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@dataclass
class Init:
    path: Path
    password: str
    key: str


def field(output: str, label: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(label)]
    assert len(lines) == 1, output
    return lines[0].split(":", 1)[1].strip()


@pytest.fixture
def cfg(tmp_path: Path) -> Init:
    path = tmp_path / "conf" / "users.toml"
    path.parent.mkdir()
    out = ok("init", "--config", path)
    return Init(path, field(out, "password:"), field(out, "API key:"))


def new_key(output: str) -> str:
    key = output.strip().splitlines()[-1]
    assert key.startswith("sk-")
    assert len(key) > 40
    return key


def test_init_prints_password_and_key_once_and_they_work(cfg: Init) -> None:
    admin = load_config(cfg.path).users["admin"]
    assert admin.role == "admin"
    assert admin.key_hash == hash_api_key(cfg.key)
    assert verify_password(cfg.password, admin.password_hash)
    text = cfg.path.read_text()
    assert cfg.key not in text
    assert cfg.password not in text
    assert (cfg.path.stat().st_mode & 0o777) == 0o600


def test_init_refuses_to_overwrite_without_force(cfg: Init) -> None:
    before = cfg.path.read_bytes()
    assert "already exists (use --force" in fails("init", "-c", cfg.path)
    assert cfg.path.read_bytes() == before
    out = ok("init", "-c", cfg.path, "--force", "--admin", "boss", "--upstream", "http://gpu:8080/")
    config = load_config(cfg.path)
    assert set(config.users) == {"boss"}
    assert config.server.upstream == "http://gpu:8080"
    assert config.users["boss"].key_hash == hash_api_key(field(out, "API key:"))


def test_init_with_bad_values_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    assert "[server].upstream" in fails("init", "-c", path, "--upstream", "gpu:8080")
    assert "invalid user name" in fails("init", "-c", path, "--admin", "bad name")
    assert not path.exists()


def test_user_add_prints_a_working_key(cfg: Init) -> None:
    out = ok(
        "user", "add", "alice", "-c", cfg.path, "--password", "wonderland",
        "--rps", "2", "--burst", "4", "--quota", "1000", "--max-tokens", "64",
    )  # fmt: skip
    key = new_key(out)
    assert out.count(key) == 1
    alice = load_config(cfg.path).users["alice"]
    assert alice.key_hash == hash_api_key(key)
    assert verify_password("wonderland", alice.password_hash)
    assert (alice.role, alice.rps, alice.burst, alice.quota, alice.max_tokens) == (
        "user",
        2.0,
        4,
        1000,
        64,
    )
    admin_key = new_key(ok("user", "add", "ops", "--role", "admin", "-c", cfg.path))
    assert load_config(cfg.path).users["ops"].role == "admin"
    assert admin_key != key


def test_user_add_errors(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path)
    before = cfg.path.read_bytes()
    assert "'alice' already exists" in fails("user", "add", "alice", "-c", cfg.path)
    assert "invalid user name" in fails("user", "add", "no spaces", "-c", cfg.path)
    assert "--role" in fails("user", "add", "bob", "--role", "root", "-c", cfg.path)
    assert "rps" in fails("user", "add", "bob", "--rps", "-3", "-c", cfg.path)
    assert "password" in fails("user", "add", "bob", "--password", "123", "-c", cfg.path)
    assert cfg.path.read_bytes() == before


def test_list_and_show_json_never_show_hashes(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path, "--password", "wonderland", "--quota", "5")
    listed = ok("user", "list", "--json", "-c", cfg.path)
    shown = ok("user", "show", "alice", "--json", "-c", cfg.path)
    for out in (listed, shown, ok("user", "list", "-c", cfg.path), ok("user", "-c", cfg.path)):
        assert "sha256" not in out
        assert "scrypt" not in out
        assert "alice" in out
    users = json.loads(listed)
    assert [u["user"] for u in users] == ["admin", "alice"]
    alice = json.loads(shown)
    assert alice == users[1]
    assert alice["quota"] == 5
    assert alice["rps"] is None
    assert alice["has_password"] is True
    assert alice["has_key"] is True
    assert "no such user: 'bob'" in fails("user", "show", "bob", "-c", cfg.path)


def limits_of(path: Path, name: str) -> tuple[Any, ...]:
    user = load_config(path).users[name]
    return (user.rps, user.burst, user.quota, user.max_tokens)


def test_set_limit(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path, "--quota", "100", "--burst", "3")
    assert ok("user", "set-limit", "alice", "--rps", "2", "-c", cfg.path) == "alice: rps=2\n"
    assert limits_of(cfg.path, "alice") == (2.0, 3, 100, None)
    ok("user", "set-limit", "alice", "--quota", "none", "--max-tokens", "32", "-c", cfg.path)
    assert limits_of(cfg.path, "alice") == (2.0, 3, None, 32)
    assert "quota" not in cfg.path.read_text().split("[users.alice]")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", "-1"], "rps: must be >= 0"),
        (["--rps", "0"], "rps: must be > 0"),
        (["--rps", "fast"], "--rps: expected a number or 'none', got 'fast'"),
        (["--rps", "nan"], "rps: must be a finite number"),
        (["--burst", "1.5"], "--burst: expected an integer or 'none', got '1.5'"),
        (["--burst", "0"], "burst: must be >= 1"),
        (["--quota", "-1"], "quota: must be >= 0"),
        (["--max-tokens", "lots"], "--max-tokens: expected an integer"),
        ([], "nothing to change"),
    ],
)
def test_set_limit_rejects_bad_values(cfg: Init, args: list[str], message: str) -> None:
    ok("user", "add", "alice", "-c", cfg.path, "--rps", "1")
    before = cfg.path.read_bytes()
    assert message in fails("user", "set-limit", "alice", *args, "-c", cfg.path)
    assert cfg.path.read_bytes() == before


def test_unknown_user_is_one_line_for_every_command(cfg: Init) -> None:
    for command in (
        ["show", "ghost"],
        ["set-limit", "ghost", "--rps", "1"],
        ["suspend", "ghost"],
        ["resume", "ghost"],
        ["rotate-key", "ghost"],
        ["passwd", "ghost", "--password", "longenough"],
        ["remove", "ghost"],
    ):
        assert "no such user: 'ghost'" in fails("user", *command, "-c", cfg.path)
    assert "no such user: 'ghost'" in fails("usage", "ghost", "-c", cfg.path)


def test_suspend_and_resume(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path)
    assert ok("user", "suspend", "alice", "-c", cfg.path) == "alice: suspended\n"
    assert load_config(cfg.path).users["alice"].suspended
    assert json.loads(ok("user", "show", "alice", "--json", "-c", cfg.path))["suspended"]
    assert "suspended" in ok("user", "list", "-c", cfg.path)
    ok("user", "resume", "alice", "-c", cfg.path)
    assert not load_config(cfg.path).users["alice"].suspended


def test_rotate_key_replaces_the_old_hash(cfg: Init) -> None:
    old = new_key(ok("user", "add", "alice", "-c", cfg.path))
    new = new_key(ok("user", "rotate-key", "alice", "-c", cfg.path))
    assert new != old
    text = cfg.path.read_text()
    assert hash_api_key(old) not in text
    assert load_config(cfg.path).users["alice"].key_hash == hash_api_key(new)


def test_passwd_with_option_and_prompt(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path, "--password", "first-pw")
    ok("user", "passwd", "alice", "--password", "second-pw", "-c", cfg.path)
    assert verify_password("second-pw", load_config(cfg.path).users["alice"].password_hash)
    result = run("user", "passwd", "alice", "-c", cfg.path, input="third-pw\nthird-pw\n")
    assert result.exit_code == 0, result.output
    assert "third-pw" not in result.output, "the prompt hides the input"
    stored = load_config(cfg.path).users["alice"].password_hash
    assert verify_password("third-pw", stored)
    assert not verify_password("second-pw", stored)
    assert "too short" in fails("user", "passwd", "alice", "--password", "abc", "-c", cfg.path)


def test_remove_refuses_the_last_admin(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path)
    ok("user", "remove", "alice", "-c", cfg.path)
    assert "alice" not in load_config(cfg.path).users
    assert "last admin" in fails("user", "remove", "admin", "-c", cfg.path)
    ok("user", "add", "ops", "--role", "admin", "-c", cfg.path)
    ok("user", "remove", "admin", "-c", cfg.path)
    assert set(load_config(cfg.path).users) == {"ops"}


def fill_ledger(path: Path, records: list[tuple[str, int, int]]) -> None:
    ledger = Ledger(path)
    ledger.open()
    for user, prompt, completion in records:
        ledger.record(
            UsageRecord(0.0, user, "m", "chat", prompt, completion, False, 200, "ok", 1, None, "r")
        )
    ledger.close()


def test_usage_reads_the_ledger(cfg: Init) -> None:
    ok("user", "add", "alice", "--quota", "100", "-c", cfg.path)
    ok("user", "add", "bob", "--quota", "10", "-c", cfg.path)
    fill_ledger(cfg.path.parent / "usage.db", [("alice", 10, 20), ("alice", 5, 5), ("bob", 8, 9)])
    rows = json.loads(ok("usage", "--json", "-c", cfg.path))
    assert rows == [
        {"user": "admin", "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
         "total_tokens": 0, "quota": None, "remaining": None},
        {"user": "alice", "requests": 2, "prompt_tokens": 15, "completion_tokens": 25,
         "total_tokens": 40, "quota": 100, "remaining": 60},
        {"user": "bob", "requests": 1, "prompt_tokens": 8, "completion_tokens": 9,
         "total_tokens": 17, "quota": 10, "remaining": 0},
    ]  # fmt: skip
    assert json.loads(ok("usage", "alice", "--json", "-c", cfg.path)) == [rows[1]]
    table = ok("usage", "-c", cfg.path).splitlines()
    assert table[0].split() == [
        "user", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "quota",
        "remaining",
    ]  # fmt: skip
    assert table[2].split() == ["alice", "2", "15", "25", "40", "100", "60"]
    assert table[1].split() == ["admin", "0", "0", "0", "0", "-", "-"]


def test_usage_all_shows_removed_users_history(cfg: Init) -> None:
    ok("user", "add", "alice", "-c", cfg.path)
    fill_ledger(cfg.path.parent / "usage.db", [("alice", 3, 4), ("gone", 1, 2)])
    assert [r["user"] for r in json.loads(ok("usage", "--json", "-c", cfg.path))] == [
        "admin",
        "alice",
    ]
    rows = json.loads(ok("usage", "--all", "--json", "-c", cfg.path))
    assert [r["user"] for r in rows] == ["admin", "alice", "gone"]
    assert rows[2]["total_tokens"] == 3 and rows[2]["quota"] is None


def test_usage_without_a_ledger_is_zero_and_a_corrupt_one_is_an_error(cfg: Init) -> None:
    rows = json.loads(ok("usage", "--json", "-c", cfg.path))
    assert rows[0]["requests"] == 0
    assert not (cfg.path.parent / "usage.db").exists(), "reading creates no ledger"
    (cfg.path.parent / "usage.db").write_text("garbage " * 100)
    assert "cannot read the usage ledger" in fails("usage", "-c", cfg.path)


def test_check(cfg: Init, tmp_path: Path) -> None:
    assert "ok (1 users" in ok("check", "-c", cfg.path)
    broken = tmp_path / "broken.toml"
    broken.write_text('[server]\nport = 8000\n\n[users.alice]\nrole = "user\n')
    assert "line 5" in fails("check", "-c", broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[users.alice]\nrole = "user"\nrsp = 2\n')
    assert "[users.alice].rsp: unknown field" in fails("check", "-c", unknown)
    negative = tmp_path / "negative.toml"
    negative.write_text('[users.alice]\nrole = "user"\nrps = -2\n')
    assert "[users.alice].rps" in fails("check", "-c", negative)


def test_config_from_environment(cfg: Init) -> None:
    env = {"GATEWAYCTL_CONFIG": str(cfg.path)}
    ok("user", "add", "alice", env=env)
    assert "alice" in load_config(cfg.path).users
    assert [u["user"] for u in json.loads(ok("user", "list", "--json", env=env))] == [
        "admin",
        "alice",
    ]
    assert "ok (2 users" in ok("check", env=env)
    assert "no such file" in fails("check", env={"GATEWAYCTL_CONFIG": "/nonexistent/u.toml"})


def test_config_given_to_the_user_group_is_used(cfg: Init) -> None:
    # `gatewayctl user --config X list` must act on X, not on ./users.toml.
    out = ok("user", "--config", cfg.path, "list", "--json")
    assert [u["user"] for u in json.loads(out)] == ["admin"]
    ok("user", "-c", cfg.path, "add", "alice")
    assert "alice" in load_config(cfg.path).users
    assert not Path("users.toml").exists()


def test_missing_or_unreadable_config_is_one_line(tmp_path: Path) -> None:
    assert "no such file (create one with `gatewayctl init`)" in fails("check")
    assert "no such file" in fails("user", "list", "-c", tmp_path / "absent.toml")
    assert "cannot read" in fails("user", "add", "x", "-c", tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert "cannot read" in fails("usage", "-c", binary)
    assert "cannot create lock file" in fails("init", "-c", tmp_path / "no" / "dir" / "u.toml")


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    path = tmp_path / "demo" / "users.toml"
    path.parent.mkdir()
    shutil.copy(REPO_USERS_TOML, path)
    return path


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records the servers ``serve`` would start, instead of starting them."""
    calls: list[dict[str, Any]] = []

    def fake_run(app: object, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(proxy_app, "create_app", lambda path, upstream=None: (path, upstream))
    return calls


def test_serve_refuses_several_workers(demo: Path, started: list[dict[str, Any]]) -> None:
    assert "--workers must be 1" in fails("serve", "--workers", "2", "-c", demo)
    assert started == []


def test_serve_refuses_a_public_address_with_demo_credentials(
    demo: Path, started: list[dict[str, Any]]
) -> None:
    error = fails("serve", "--host", "0.0.0.0", "-c", demo)
    assert "refusing to bind 0.0.0.0" in error
    assert "admin, alice, bob, charlie" in error
    assert "--allow-demo-credentials" in error
    assert started == []


def test_serve_with_demo_credentials_on_loopback(demo: Path, started: list[dict[str, Any]]) -> None:
    result = run("serve", "-c", demo, "--upstream", "http://gpu:1")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    [call] = started
    assert (call["host"], call["port"]) == ("127.0.0.1", 8000)
    assert call["app"] == (demo, "http://gpu:1")


def test_serve_public_address_allowed_with_flag(demo: Path, started: list[dict[str, Any]]) -> None:
    result = run(
        "serve", "--host", "0.0.0.0", "--port", "9001", "--allow-demo-credentials", "-c", demo
    )
    assert result.exit_code == 0, result.output
    assert "warning: serving on 0.0.0.0 with the publicly known demo credentials" in result.stderr
    [call] = started
    assert (call["host"], call["port"]) == ("0.0.0.0", 9001)


def test_serve_public_address_without_demo_credentials(
    cfg: Init, started: list[dict[str, Any]]
) -> None:
    result = run("serve", "--host", "0.0.0.0", "-c", cfg.path)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert started[0]["host"] == "0.0.0.0"


def test_serve_rejects_bad_options_before_starting(
    demo: Path, started: list[dict[str, Any]]
) -> None:
    assert "--log-level must be one of" in fails("serve", "--log-level", "loud", "-c", demo)
    assert "--port must be between 1 and 65535" in fails("serve", "--port", "99999", "-c", demo)
    assert "[server].upstream" in fails("serve", "--upstream", "ftp://gpu", "-c", demo)
    assert started == []
    ok("serve", "--log-level", "WARNING", "-c", demo)
    assert started[0]["log_level"] == "warning"


# The real console script, as a user runs it.


def gatewayctl(
    *args: object, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "GATEWAYCTL_CONFIG"} | (env or {})
    return subprocess.run(
        [str(GATEWAYCTL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_console_script_errors(cfg: Init) -> None:
    add = gatewayctl("user", "add", "alice", env={"GATEWAYCTL_CONFIG": str(cfg.path)})
    assert add.returncode == 0, add.stderr
    assert new_key(add.stdout)
    duplicate = gatewayctl("user", "add", "alice", "-c", cfg.path)
    assert "already exists" in assert_clean_failure(duplicate)
    (cfg.path.parent / "usage.db").write_text("garbage " * 100)
    assert "usage ledger" in assert_clean_failure(gatewayctl("usage", "--json", "-c", cfg.path))
    assert "--workers" in assert_clean_failure(
        gatewayctl("serve", "--workers", "2", "-c", cfg.path)
    )
    cfg.path.write_text("[users.x]\nrole = 'user'\nburst = 'big'\n")
    assert "[users.x].burst" in assert_clean_failure(gatewayctl("check", "-c", cfg.path))


def test_console_script_serve_guard(demo: Path) -> None:
    refused = gatewayctl("serve", "--host", "0.0.0.0", "-c", demo)
    assert "refusing to bind 0.0.0.0" in assert_clean_failure(refused)
    assert not (demo.parent / "usage.db").exists(), "refused before anything started"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_console_script_serve_proceeds_with_the_flag(demo: Path, busy_port: int) -> None:
    # The port is taken, so the server fails right after the guard let it through.
    proc = gatewayctl(
        "serve", "--host", "0.0.0.0", "--port", busy_port, "--allow-demo-credentials", "-c", demo
    )
    assert "warning: serving on 0.0.0.0 with the publicly known demo credentials" in proc.stderr
    assert "address already in use" in proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


def test_passwd_of_an_unknown_user_fails_before_asking(cfg: Init) -> None:
    result = run("user", "passwd", "nobody", "-c", cfg.path, input="pw-123456\npw-123456\n")
    assert result.exit_code == 1
    assert "Password" not in result.output, "no prompt for a user that does not exist"
    assert result.stderr == "error: no such user: 'nobody'\n"
