"""README documents every command, config key and export field, and CI runs README's test command."""

import re
from pathlib import Path

import click
import pytest

from monitor import config as cfg
from monitor.cli.main import cli
from monitor.output.export import CLASSIFICATION_FIELDS, CSV_FIELDS, FLOW_FIELDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield prefix + name
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + name + " ")


@pytest.mark.parametrize("command", sorted(_commands(cli)))
def test_every_command_is_in_readme(command):
    last = command.split()[-1]
    assert f"`{command}" in README or f"{last}" in README and command.split()[0] in README, command


def _config_keys():
    keys = set()
    for name in dir(cfg):
        if name.startswith("_") and name.endswith("_KEYS") and isinstance(getattr(cfg, name), tuple):
            keys.update(k for k in getattr(cfg, name) if k not in ("env", "file", "value", "source", "as_of", "note"))
    for spec in cfg._CHANNEL_SETTINGS.values():
        keys.update(spec)
    keys.update(cfg.SECTIONS)
    return sorted(keys)


CODE_SPANS = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))


@pytest.mark.parametrize("key", _config_keys())
def test_every_config_key_is_in_readme(key):
    # a key is documented when it appears as a word inside some code span: `key`, `[alerts]`, `{ key, ... }`
    assert any(re.search(rf"(?<!\w){re.escape(key)}(?!\w)", span) for span in CODE_SPANS), key


@pytest.mark.parametrize("field", sorted(set(FLOW_FIELDS) | set(CLASSIFICATION_FIELDS) | set(CSV_FIELDS)))
def test_every_export_field_is_in_readme(field):
    assert field in README, field


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 2
    main_job, test_cmd = commands
    assert "treasury-monitor demo" in main_job and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()
