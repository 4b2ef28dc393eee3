"""The wheel a user installs (`pip install .`, README's first command) ships every module and data file.

The test suite runs on an editable install, which imports from the work tree and so cannot notice a
package or data file missing from the wheel; this builds the real wheel and compares it with the tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOMS = ("monitor", "watchers", "alerts", "storage")
# What the product reads at run time besides its modules (see [tool.setuptools.package-data]).
DATA_SUFFIXES = {".json", ".toml", ".csv", ".md", ".LICENSE", ".html", ".css", ".js"}


def _tracked_files(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def test_the_wheel_ships_every_module_and_data_file_of_the_rooms(tmp_path: Path) -> None:
    # Build from a copy of the tracked files: setuptools reuses an in-tree build/ directory, whose
    # leftovers could hide a package that the configuration leaves out.
    src = tmp_path / "src"
    for f in _tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("treasury_monitor-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = [f for f in _tracked_files(*ROOMS) if Path(f).suffix in {".py"} | DATA_SUFFIXES]
    assert len(wanted) > 100  # the rooms' files were listed at all
    missing = [f for f in wanted if f not in shipped]
    assert missing == [], f"not in the wheel: {missing}"
