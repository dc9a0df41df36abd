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


def test_quick_demo_tells_the_story_of_l2_in_its_numbers_and_its_plots(tmp_path):
    result = demo.run("cpu", quick=True, out_dir=tmp_path, progress=False)
    sweep = result.sweep
    by_lam = {r.lam: r for r in sweep.results}
    assert by_lam[max(by_lam)].gap < by_lam[0.0].gap / 2  # the gap shrinks as lambda grows
    assert sweep.best_lam > 0 and by_lam[sweep.best_lam].dev_loss < by_lam[0.0].dev_loss
    assert by_lam[0.0].train_accuracy == 1.0  # lambda = 0 learns the 100 training digits by heart
    assert 0.8 < result.test_best <= 1.0
    for path in result.paths:
        width, height = png_size(path)
        assert width >= 400 and height >= 300

    # What the validation curve draws: the chosen lambda's development loss is the lowest, marked;
    # lambda = 0's training loss lies far below its development loss; the largest lambda underfits.
    curve = result.plotted["validation_curve.png"]
    _, train = curve["training loss"]
    _, dev = curve["development loss (\u00b1 2 standard errors)"]
    chosen_x, chosen_y = curve[f"chosen lambda = {sweep.best_lam:g}"]
    assert chosen_y[0] == dev.min() and dev[int(chosen_x[0])] == dev.min()
    assert list(dev) == [r.dev_loss for r in sweep.results] and list(train) == [r.train_loss for r in sweep.results]
    assert dev[0] - train[0] > 0.3 and train[0] < 0.01  # memorised: a gap of a third of a nat
    assert train[-1] > 2 * dev.min()  # too large a lambda: even the training loss is high

    # The learning curves: lambda = 0's training loss goes to 0 while its development loss stays high;
    # the chosen lambda ends lower on the development data.
    learning = result.plotted["learning_curves.png"]
    _, train_zero = learning["training, lambda = 0"]
    _, dev_zero = learning["development, lambda = 0"]
    _, dev_best = learning[f"development, lambda = {sweep.best_lam:g}"]
    assert train_zero[-1] < 0.01 and dev_zero[-1] - train_zero[-1] > 0.3
    assert dev_best[-1] < dev_zero[-1]


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


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"l2fast {l2fast.__version__}"
