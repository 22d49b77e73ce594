import subprocess
import sys

import benchmark


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True)


def test_version_and_help():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"spinebench {benchmark.__version__}"
    assert benchmark.__version__ != "0+unknown"
    help_ = _cli("--help")
    assert help_.returncode == 0 and "Vertebra localization" in help_.stdout
