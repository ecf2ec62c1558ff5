"""Importing the package from the repository's root, where Python finds the source folder before
any install (no editable finder): the deployment kit still resolves, from ``export/``."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_package_imports_from_a_source_checkout():
    # -S: no site processing, so no editable-install finder; the installed dependencies are
    # appended after the checkout, as they come after the current folder on a normal sys.path
    code = (
        "import sys\n"
        f"sys.path.append({site.getsitepackages()[0]!r})\n"
        "import diffperception, diffperception.deploy\n"
        "from diffperception.deploy.contract import IMAGES\n"
        "assert diffperception.deploy.__file__.endswith('export/__init__.py'), "
        "diffperception.deploy.__file__\n"
        "assert 'gd-linear-digits' in diffperception.list_presets()\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
