"""README documents every command, config key and export field, and CI runs README's test command.

The checks read README's structure, not its words: the Commands table, the Configuration reference's
bullet per section and the Export schema table. A command, key or field counts as documented only where
it belongs (a key in its own section's bullet), and what README documents must exist (no stale rows).
"""

import re
from pathlib import Path

import click
import pytest

from monitor import config as cfg
from monitor.cli.main import cli
from monitor.output.export import CLASSIFICATION_FIELDS, CSV_FIELDS, FLOW_FIELDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


# --- README's structure ---------------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body of a `## heading` (up to the next heading of the same or a higher level)."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, flags=re.M)
    assert m, f"README has no heading {heading!r}"
    level = len(m.group(1))
    rest = text[m.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def table(text: str) -> list[list[str]]:
    """The rows of the first markdown table in `text` (header and separator left out), cells stripped."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3 and set(lines[1].replace("|", "").strip()) <= set("-: "), "no markdown table"
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines[2:]]


def code_spans(text: str) -> list[str]:
    return [s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", text)]


def bullets(text: str) -> list[str]:
    """Top-level `- ` list items, each with its indented continuation lines."""
    items: list[str] = []
    for ln in text.splitlines():
        if ln.startswith("- "):
            items.append(ln[2:])
        elif items and ln.startswith("  ") and ln.strip():
            items[-1] += " " + ln.strip()
        elif not ln.strip() or not ln.startswith(" "):
            if items and not ln.startswith("- "):
                items.append("")  # a paragraph ends the list item before it
    return [i for i in items if i]


# --- commands -------------------------------------------------------------------------------------------


def cli_commands(group: click.Group, prefix: str = "") -> set[str]:
    """Every command a user types: leaf commands, and groups that do something on their own."""
    out = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                out.add(prefix + name)
            out |= cli_commands(cmd, prefix + name + " ")
        else:
            out.add(prefix + name)
    return out


def documented_commands(readme: str) -> set[str]:
    """Command names in the first column of README's Commands table (`entities add/remove` names two)."""
    out = set()
    for row in table(section(readme, "Commands")):
        for span in code_spans(row[0]):
            words = []
            for w in span.split():
                if w.startswith(("[", "-", "<")) or not re.fullmatch(r"[a-z][a-z0-9/_-]*", w):
                    break
                words.append(w)
            assert words, f"Commands table: {span!r} names no command"
            *head, last = words
            out |= {" ".join([*head, alt]) for alt in last.split("/")}
    return out


def test_every_command_is_in_the_commands_table_and_every_row_exists():
    have, documented = cli_commands(cli), documented_commands(README)
    assert not have - documented, f"commands missing from README's Commands table: {sorted(have - documented)}"
    assert not documented - have, f"README's Commands table names commands that do not exist: {sorted(documented - have)}"


# --- config keys ----------------------------------------------------------------------------------------

# Which section's bullet documents each key table of monitor/config.py.
KEY_TABLES = {
    "_MONITOR_KEYS": "monitor",
    "_SOURCE_KEYS": "sources",
    "_BITCOIND_SOURCE_KEYS": "sources",
    "_EVM_SOURCE_KEYS": "sources",
    "_TOKEN_KEYS": "sources",
    "_ENTITY_KEYS": "entities",
    "_ADDRESS_KEYS": "entities",
    "_PROFILE_KEYS": "entities",
    "_FACT_KEYS": "entities",
    "_CLASSIFY_KEYS": "classify",
    "_PRICE_KEYS": "prices",
    "_ALERTS_KEYS": "alerts",
    "_RULE_KEYS": "alerts",
    "_BALANCE_KEYS": "alerts",
    "_DORMANCY_KEYS": "alerts",
    "_DAEMON_KEYS": "daemon",
    "_DISCOVERY_KEYS": "discovery",
    "_MINERS_KEYS": "miners",
    "_SECRET_KEYS": None,  # `{ env = "NAME" }` / `{ file = ... }`: the Secrets paragraph, checked below
}


def config_keys() -> list[tuple[str, str]]:
    """(section, key) for every key the config loader accepts."""
    tables = {n for n in dir(cfg) if n.startswith("_") and n.endswith("_KEYS") and isinstance(getattr(cfg, n), tuple)}
    assert tables == set(KEY_TABLES), f"map these key tables to a README section: {sorted(tables ^ set(KEY_TABLES))}"
    out = {(sec, k) for name, sec in KEY_TABLES.items() if sec for k in getattr(cfg, name)}
    out |= {("alerts", k) for spec in cfg._CHANNEL_SETTINGS.values() for k in spec}
    out |= {("alerts", k) for k in ("name", "type", "min_interval")}  # every [[alerts.channels]] entry
    return sorted(out)


def section_bullets(readme: str) -> dict[str, str]:
    """Configuration reference: section name → its bullet (`- `[alerts]`: ...`, `- `[[sources]]`: ...`)."""
    out = {}
    for item in bullets(section(readme, "Configuration reference")):
        m = re.match(r"`\[\[?([a-z_]+)\]\]?`:", item)
        if m:
            out[m.group(1)] = item
    return out


def test_every_config_section_has_its_bullet():
    assert set(section_bullets(README)) == set(cfg.SECTIONS)


@pytest.mark.parametrize(("sec", "key"), config_keys())
def test_every_config_key_is_in_its_sections_bullet(sec, key):
    words = {w for span in code_spans(section_bullets(README)[sec]) for w in re.findall(r"\w+", span)}
    assert key in words, f"[{sec}] {key} is not in README's Configuration reference bullet for [{sec}]"


def test_secret_forms_are_documented():
    spans = code_spans(README)
    for key in cfg._SECRET_KEYS:
        assert any(re.fullmatch(rf"\{{ ?{key} = .+\}}", s) for s in spans), f"the `{{ {key} = ... }}` secret form"


# --- export fields --------------------------------------------------------------------------------------


def export_rows(readme: str) -> dict[str, str]:
    """Export schema table: field name → its description cell."""
    out = {}
    for row in table(section(readme, "Export schema (`treasury-monitor.flow/1`)")):
        for span in code_spans(row[0]):
            for name in span.split(","):
                out[name.strip()] = row[1]
    return out


def test_export_table_lists_exactly_the_record_fields():
    rows = export_rows(README)
    assert set(rows) == set(FLOW_FIELDS), (sorted(set(FLOW_FIELDS) - set(rows)), sorted(set(rows) - set(FLOW_FIELDS)))


def test_classification_object_lists_exactly_its_fields():
    first = code_spans(export_rows(README)["classification"])
    braces = next(s for s in first if s.startswith("{"))
    named = {n.strip().rstrip("?") for n in braces.strip("{}").split(",")}
    assert named == set(CLASSIFICATION_FIELDS), (
        sorted(set(CLASSIFICATION_FIELDS) - named),
        sorted(named - set(CLASSIFICATION_FIELDS)),
    )


def test_csv_columns_beyond_the_record_are_documented():
    body = section(README, "Export schema (`treasury-monitor.flow/1`)")
    csv_paragraph = next(p for p in body.split("\n\n") if p.startswith("CSV has one row per flow"))
    extra = set(CSV_FIELDS) - (set(FLOW_FIELDS) - {"destinations"})
    assert extra <= set(code_spans(csv_paragraph)), sorted(extra - set(code_spans(csv_paragraph)))


# --- the checks above can fail --------------------------------------------------------------------------


def test_the_parsers_catch_an_undocumented_command_key_or_field():
    readme = README.replace("| `scenarios [--json]` |", "| scenarios [--json] |")
    assert "scenarios" not in documented_commands(readme)
    readme = README.replace("`digest_channels`", "digest channels")
    words = {w for s in code_spans(section_bullets(readme)["daemon"]) for w in re.findall(r"\w+", s)}
    assert "digest_channels" not in words
    # a key named in another section's bullet does not document this one
    assert "interval" in {w for s in code_spans(section_bullets(README)["miners"]) for w in re.findall(r"\w+", s)}
    assert "token" not in {w for s in code_spans(section_bullets(README)["miners"]) for w in re.findall(r"\w+", s)}
    readme = README.replace("| `asset`, `decimals` |", "| `asset` |")
    assert "decimals" not in export_rows(readme)


# --- set-up commands ------------------------------------------------------------------------------------


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 2
    main_job, test_cmd = commands
    assert "treasury-monitor demo" in main_job and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()
