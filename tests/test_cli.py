"""The command line's demo runs end to end and shows L2 at work."""
import io
import subprocess
import sys

import pytest

from l2fast.__main__ import main
from l2fast.demo import epoch_timing, lambda_sweep


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_lambda_sweep_closes_the_gap_and_beats_lambda_zero(backend):
    out = io.StringIO()
    results = lambda_sweep(backend, quick=True, out=out)
    text = out.getvalue()
    assert "best lambda on the development set" in text
    dev_losses = [dev for _, dev in results]
    assert results[0][0] == 0 and min(dev_losses) < dev_losses[0]
    rows = [line.split() for line in text.splitlines()[2:2 + len(results)]]
    gaps = [float(row[3]) for row in rows]
    assert gaps[-1] < gaps[0] / 2


def test_epoch_timing_covers_every_available_backend():
    times = epoch_timing(quick=True, out=io.StringIO())
    assert set(times) == {"numpy", "cpu"} and all(t > 0 for t in times.values())


def test_demo_command_runs():
    result = subprocess.run([sys.executable, "-m", "l2fast", "demo", "--quick"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lambda sweep" in result.stdout and "cpu:" in result.stdout


def test_demo_with_cuda_on_a_machine_without_it_exits_with_the_reason(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--backend", "cuda"])
    assert exit_info.value.code == 2
    assert "cuda" in capsys.readouterr().err


def test_ci_runs_the_readme_commands():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().splitlines()
    block = readme[readme.index("```") + 1:]
    demo_command, test_command = block[0], block[1]
    assert block[2] == "```" and "l2fast demo" in demo_command and "pytest" in test_command
    assert test_command in (root / ".ci" / "run").read_text().splitlines()
