import subprocess
import sys

import spinebench


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "spinebench", *args], capture_output=True, text=True)


def test_version_and_help():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"spinebench {spinebench.__version__}"
    assert spinebench.__version__ != "0+unknown"
    help_ = _cli("--help")
    assert help_.returncode == 0 and "Vertebra localization" in help_.stdout


def test_run_help_lists_every_shipped_config():
    from spinebench.configs import shipped_names

    help_ = _cli("run", "--help")
    text = " ".join(help_.stdout.split())  # argparse wraps the list over lines
    assert help_.returncode == 0 and "sim2real" in text and "converge" in text
    assert all(name in text for name in shipped_names())


def test_every_output_option_has_the_short_form_o():
    """``-o`` is ``--out`` in every command that writes somewhere (predict had it alone; users type it everywhere)."""
    from spinebench.benchmark.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    with_out = {name: p for name, p in sub.choices.items() if any(a.dest == "out" for a in p._actions)}
    assert set(with_out) >= {"centroids", "convert", "phantom", "run", "tune", "predict", "leaderboard"}
    for name, p in with_out.items():
        out = next(a for a in p._actions if a.dest == "out")
        assert out.option_strings == ["-o", "--out"], name
