"""Builds the kernel library of cpp/ on its own (no Python headers) and runs its C++ tests: once as
released, once under AddressSanitizer and UndefinedBehaviorSanitizer (leak checks included), once under
ThreadSanitizer (the helper pool, the stop checks, trainings in several threads at once)."""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CPP = Path(__file__).resolve().parents[1] / "cpp"
SANITIZED = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1"
# Without function entry/exit hooks: the target_clones resolvers run before ThreadSanitizer is set up,
# and a hook there crashes the test at load time. Races are still caught, with their stacks.
THREAD_SANITIZED = "-fsanitize=thread --param=tsan-instrument-func-entry-exit=0 -fno-omit-frame-pointer -O1 -g"


@pytest.mark.parametrize("flags", ["", SANITIZED, THREAD_SANITIZED], ids=["release", "asan-ubsan", "tsan"])
def test_cpp_kernel_tests_pass(tmp_path, flags):
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed for the C++ tests: pip install '.[test]' provides it")
    configure = [cmake, "-S", str(CPP), "-B", str(tmp_path), "-DL2FAST_CPP_TESTS=ON",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CXX_FLAGS={flags}"]
    if flags:
        configure.append("-DCMAKE_BUILD_TYPE=Debug")
    for command in (configure, [cmake, "--build", str(tmp_path), "--parallel", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1",
               TSAN_OPTIONS=f"halt_on_error=1:second_deadlock_stack=1:suppressions={CPP / 'tests' / 'tsan.supp'}")
    result = subprocess.run([str(tmp_path / "test_kernels")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0 and "OK: 0 failure(s)" in result.stdout, result.stdout + result.stderr
    assert "runtime error" not in result.stderr and "Sanitizer" not in result.stderr, result.stderr
    # The linear step's prefetches are in its object code: GCC once deleted every call to its prefetch-only helpers,
    # taking them for functions without side effects (benchmarks/README.md, A, session 12).
    # Checked on x86-64 (other machines' prefetch instructions have other names), in the release build alone.
    if flags or platform.machine() not in ("x86_64", "AMD64"):
        return
    objdump, linear_step = shutil.which("objdump"), tmp_path / "CMakeFiles" / "l2fast_kernels.dir" / "linear_step.cpp.o"
    assert objdump, "objdump (binutils, beside the compiler) is needed to check the linear step's prefetches"
    assert linear_step.exists(), f"the linear step's object file is not where CMake was expected to put it: {linear_step}"
    disassembly = subprocess.run([objdump, "-d", str(linear_step)], capture_output=True, text=True, check=True).stdout
    assert "prefetcht1" in disassembly, "the linear step's prefetches are missing from its object code"
