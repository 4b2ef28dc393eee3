"""deploy/: the systemd unit verified and scored by systemd-analyze, the Dockerfile's user and health check.

No systemd runs here and no Docker engine: `systemd-analyze verify` and `security --offline` read the unit
file itself (CI installs the `systemd` package for them).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "treasury-monitor.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
INSTALLED = "/opt/treasury-monitor/bin/treasury-monitor"


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: apt-get install systemd (.ci/run does)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def unit_here(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this venv's entry point (verify checks the binary exists)."""
    text = UNIT.read_text()
    assert INSTALLED in text
    here = tmp_path / "treasury-monitor.service"
    here.write_text(text.replace(INSTALLED, str(Path(sys.executable).parent / "treasury-monitor")))
    return here


def settings(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines() if re.match(r"^[A-Z]\w*=", line)]


def test_unit_verifies(tmp_path):
    p = analyze("verify", str(unit_here(tmp_path)), cwd=tmp_path)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_unit_is_hardened_below_exposure_4(tmp_path):
    p = analyze("security", "--offline=yes", "--threshold=40", str(unit_here(tmp_path)), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:]
    [level] = re.findall(r"Overall exposure level for treasury-monitor.service: (\d+\.\d+)", p.stdout)
    assert float(level) < 4.0


def test_dynamic_user_reads_its_config_as_a_credential():
    """DynamicUser cannot read a root-owned 0600 config: systemd loads it as a credential the service can read."""
    pairs = settings(UNIT.read_text())
    assert ("DynamicUser", "yes") in pairs
    [cred] = [v for k, v in pairs if k == "LoadCredential"]
    name, source = cred.split(":", 1)
    [start] = [v for k, v in pairs if k == "ExecStart"]
    assert f"-c %d/{name} " in start  # %d: the service's credentials directory
    assert f"install -m 0600 config.toml {source}" in UNIT.read_text()  # the documented install step
    assert ("RestartPreventExitStatus", "2") in pairs


def test_dockerfile_runs_as_non_root_with_a_healthcheck_on_healthz():
    text = DOCKERFILE.read_text()
    [user] = re.findall(r"^USER (\S+)", text, re.M)
    assert user not in ("root", "0") and not user.startswith("0:")
    [check] = re.findall(r"^HEALTHCHECK .*", text, re.M)
    assert "/healthz" in check and "TM_API_TOKEN" in check
