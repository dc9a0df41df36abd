"""Builds the kernel library of cpp/ on its own (no Python headers) and runs its C++ tests."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CPP = Path(__file__).resolve().parents[1] / "cpp"


def test_cpp_kernel_tests_pass(tmp_path):
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed for the C++ tests: pip install '.[test]' provides it")
    configure = [cmake, "-S", str(CPP), "-B", str(tmp_path), "-DL2FAST_CPP_TESTS=ON",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    for command in (configure, [cmake, "--build", str(tmp_path), "--parallel", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([str(tmp_path / "test_kernels")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK: 0 failure(s)" in result.stdout, result.stdout + result.stderr
