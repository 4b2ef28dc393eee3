"""The CLI in process (click's CliRunner) and once as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from monitor.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).parent / "data" / "config"


def run(*args, **kw):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


def test_check_config_ok_on_the_example():
    r = run("-c", str(ROOT / "config.toml"), "check-config")
    assert r.exit_code == 0, r.output
    assert "OK" in r.output
    # it counts what the daemon will watch: the bundled entities too, not only the file's four
    from monitor.bundled import load_bundled_entities
    from monitor.config import load_config
    from monitor.core.registry import merge_entities

    merged = merge_entities(load_bundled_entities(), load_config(ROOT / "config.toml", env={}).entities)
    assert f"{len(merged)} entities (4 from this file, the rest bundled)" in r.output
    assert "tracked treasuries have no address yet" in r.output and "MARA" in r.output


def test_bad_config_exits_2_naming_the_key_and_value():
    r = run("-c", str(CASES / "invalid_address.toml"), "check-config")
    assert r.exit_code == 2
    assert "entities[" in r.stderr and "addresses[" in r.stderr and "not a valid mainnet Bitcoin address" in r.stderr


def test_every_command_has_help():
    for cmd in cli.commands:
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_python_dash_m_monitor_runs_and_exits_2_on_bad_config():
    p = subprocess.run(
        [sys.executable, "-m", "monitor", "-c", str(CASES / "testnet_address.toml"), "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert "testnet" in p.stderr


def test_export_without_database_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["-c", str(ROOT / "config.toml"), "--db", str(tmp_path / "none.db"), "export"])
    assert r.exit_code == 1 and "run `treasury-monitor backfill` first" in r.output


def test_entities_json_lists_config_entities(tmp_path):
    r = run("-c", str(ROOT / "config.toml"), "--db", str(tmp_path / "t.db"), "entities", "--json")
    assert r.exit_code == 0, r.output
    names = {e["name"] for e in json.loads(r.output)}
    assert "El Salvador" in names


def _config(tmp_path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_numbers_beyond_their_bound_fail_check_config_and_run_alike(tmp_path):
    """1e300 s passed check-config, then crashed `run` with an OverflowError; a million retries never ended a tick."""
    db = tmp_path / "d.db"
    cfg = _config(
        tmp_path,
        f'[monitor]\nstorage = "{db}"\n[[sources]]\nname = "e"\ntype = "esplora"\n'
        'urls = ["http://127.0.0.1:1/api"]\npoll_interval = 1e300\nretries = 1000000\n'
        "[alerts]\ngive_up_after = 1e300\n",
    )
    for command in ("check-config", "run"):
        r = run("-c", str(cfg), command)
        assert r.exit_code == 2, (command, r.output)
        assert "sources[0].poll_interval: must be at most 86,400, got 1e+300" in r.stderr
        assert "sources[0].retries: must be at most 10, got 1000000" in r.stderr
        assert "alerts.give_up_after: must be at most" in r.stderr
        assert "Traceback" not in r.output and not db.exists()


def test_an_empty_config_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n"):
        r = run("-c", str(_config(tmp_path, text)), "check-config")
        assert r.exit_code == 2 and "the file has no settings" in r.stderr, r.output


def test_check_config_refuses_what_run_refuses(tmp_path):
    """A non-loopback bind without a token, a storage path that is a directory: check-config said OK, run refused."""
    (tmp_path / "adir").mkdir()
    cases = [
        (f'[monitor]\nstorage = "{tmp_path / "d.db"}"\n[daemon]\nhost = "0.0.0.0"\n', "daemon.host: '0.0.0.0' is reachable"),
        (f'[monitor]\nstorage = "{tmp_path / "adir"}"\n', f"monitor.storage: {tmp_path / 'adir'} is a directory"),
        (f'[monitor]\nstorage = "{tmp_path / "afile" / "d.db"}"\n', "is not a directory"),
    ]
    (tmp_path / "afile").write_text("not a directory")
    for text, message in cases:
        cfg = _config(tmp_path, text)
        for command in ("check-config", "run"):
            r = run("-c", str(cfg), command)
            assert r.exit_code == 2 and message in r.stderr, (command, r.output)
