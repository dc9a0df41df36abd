"""The command line's demo runs end to end, shows L2 at work and writes real PNG files."""
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import l2fast
from l2fast import demo
from l2fast.__main__ import main


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_quick_demo_closes_the_gap_beats_lambda_zero_and_plots(tmp_path):
    sweep, test_best, test_zero, paths = demo.run("cpu", quick=True, out_dir=tmp_path, progress=False)
    by_lam = {r.lam: r for r in sweep.results}
    assert by_lam[max(by_lam)].gap < by_lam[0.0].gap / 2  # the gap shrinks as lambda grows
    assert sweep.best_lam > 0 and by_lam[sweep.best_lam].dev_loss < by_lam[0.0].dev_loss
    assert by_lam[0.0].train_accuracy == 1.0  # lambda = 0 learns the 100 training digits by heart
    assert 0.8 < test_best <= 1.0
    for path in paths:
        width, height = png_size(path)
        assert width >= 400 and height >= 300


def test_demo_command_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "l2fast", "demo", "--quick", "--quiet", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "chosen lambda" in result.stdout and (tmp_path / "validation_curve.png").exists()


def test_demo_with_cuda_on_a_machine_without_it_exits_with_the_reason(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # a machine without CuPy, even where there is one
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--backend", "cuda", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "cuda" in capsys.readouterr().err


def test_ci_runs_the_readme_commands():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().splitlines()
    block = readme[readme.index("```") + 1:]
    demo_command, test_command = block[0], block[1]
    assert block[2] == "```" and "l2fast demo" in demo_command and "pytest" in test_command
    assert test_command in (root / ".ci" / "run").read_text().splitlines()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"l2fast {l2fast.__version__}"
