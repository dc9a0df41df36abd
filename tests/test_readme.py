"""The README as a user meets it: its first commands are those CI runs, and its Python blocks run as pasted."""
import contextlib
import io
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(text):
    """The README's fenced blocks as (language, lines), in order; the language is "" for a bare fence."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[1].append(line)
    assert current is None, "an unclosed code fence"
    return blocks


BLOCKS = code_blocks((ROOT / "README.md").read_text())


def test_ci_runs_the_readme_commands():
    commands = next(lines for language, lines in BLOCKS if language == "")  # the first commands a reader sees
    demo_command, test_command = commands
    assert "l2fast demo" in demo_command and "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_starts_with_the_point_and_an_example():
    assert BLOCKS[0][0] == "python" and "select_lambda" in "\n".join(BLOCKS[0][1])
    assert len(BLOCKS[0][1]) <= 12


# Some blocks fork (worker processes). Where JAX is installed, an earlier test (bench's JAX peer) has imported it into
# this process, and JAX warns at every fork that its threads may deadlock the child; a user pasting a block has no
# JAX loaded, and no block uses JAX.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_every_python_block_runs_as_pasted(tmp_path, monkeypatch):
    # In order and in one namespace, as a reader pasting them into one session; warnings are errors.
    python = ["\n".join(lines) for language, lines in BLOCKS if language == "python"]
    assert len(python) >= 5
    monkeypatch.chdir(tmp_path)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED"):
        original = os.environ.get(name)  # a block's Dask LocalCluster sets these here for its workers
        monkeypatch.setenv(name, original or "")  # records the original, put back at the end (absent: deleted)
        if original is None:
            monkeypatch.delenv(name)
    namespace = {"__name__": "__readme__"}
    printed = io.StringIO()
    for k, source in enumerate(python):
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(source, f"README.md python block {k + 1}", "exec"), namespace)
            except Exception as exc:  # the block's number in the failure, not only a traceback line
                pytest.fail(f"README python block {k + 1} failed: {type(exc).__name__}: {exc}\n{source}")
    out = printed.getvalue()
    assert "lambda" in out and "test accuracy" in out  # the first example's table and result
    again, net = namespace["again"], namespace["net"]  # the save block's round trip, checked here too
    assert all((a == b).all() for a, b in zip(again.weights + again.biases, net.weights + net.biases))
