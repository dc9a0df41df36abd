"""The cuda backend's kernels compiled by NVIDIA's own NVRTC (the nvidia-cuda-nvrtc wheels of CUDA 12 and
13, from the `test` extra; no GPU or driver needed), as CuPy compiles them for the backend: the backend's
source, options and name expressions, plus the -ftz=true and -arch=sm_XX that CuPy adds, for sm_80 and
sm_90 in float32 and float64. Any error or warning fails, so does a register spill in ptxas's report,
and so does 64-bit integer division in a kernel's 32-bit-index instantiation."""
import ctypes
import glob
import platform
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from l2fast.backends import cuda as cuda_backend

ARCHS = (80, 90)
DTYPES = ("float32", "float64")
CUDA_MAJORS = (12, 13)  # the test extra's nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvrtc


def nvrtc_libraries():
    """{CUDA major: path of libnvrtc.so.<major>} from the nvidia-cuda-nvrtc wheels installed."""
    try:
        import nvidia
    except ImportError:
        return {}
    found = {}
    for folder in nvidia.__path__:
        for path in glob.glob(f"{folder}/*/lib/libnvrtc.so.[0-9]*"):
            major = path.rsplit(".", 1)[-1]
            if major.isdigit():
                found[int(major)] = path
    return found


LIBRARIES = nvrtc_libraries()
if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.skip("the nvidia-cuda-nvrtc wheels of the test extra are for Linux x86_64", allow_module_level=True)


class Compiled:
    """One NVRTC compilation: its result code, log, PTX and the lowered names of the name expressions."""

    def __init__(self, library, source, options, name_expressions):
        lib = ctypes.CDLL(library)
        program = ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"cuda_kernels.cu", 0, None, None) == 0
        try:
            for expression in name_expressions:
                assert lib.nvrtcAddNameExpression(program, expression.encode()) == 0
            encoded = [o.encode() for o in options]
            self.result = lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
            self.log = self._text(lib.nvrtcGetProgramLogSize, lib.nvrtcGetProgramLog, program)
            if self.result != 0:
                return
            self.ptx = self._text(lib.nvrtcGetPTXSize, lib.nvrtcGetPTX, program)
            self.lowered = {}
            for expression in name_expressions:
                name = ctypes.c_char_p()
                assert lib.nvrtcGetLoweredName(program, expression.encode(), ctypes.byref(name)) == 0, expression
                self.lowered[expression] = name.value.decode()
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))

    @staticmethod
    def _text(get_size, get, program):
        size = ctypes.c_size_t()
        assert get_size(program, ctypes.byref(size)) == 0
        buffer = ctypes.create_string_buffer(size.value)
        assert get(program, buffer) == 0
        return buffer.value.decode(errors="replace")

    def entry(self, name):
        """The PTX of one kernel's entry, by its (lowered) name."""
        start = self.ptx.index(f".entry {name}(")
        end = self.ptx.find(".entry ", start + 1)
        return self.ptx[start:end if end > 0 else len(self.ptx)]


def compile_kernels(library, dtype, arch):
    options = cuda_backend.NVRTC_OPTIONS + ("-ftz=true", f"-arch=sm_{arch}", "-Xptxas=-v")
    return Compiled(library, cuda_backend.kernel_source(dtype), options, cuda_backend.NAME_EXPRESSIONS)


@pytest.fixture(scope="module")
def compiled():
    """{(CUDA major, dtype, arch): Compiled} for every combination, compiled in parallel."""
    missing = [major for major in CUDA_MAJORS if major not in LIBRARIES]
    assert not missing, (f"NVRTC of CUDA {missing} is not installed: `pip install \".[test]\"` brings the "
                         f"nvidia-cuda-nvrtc wheels (found {LIBRARIES})")
    jobs = [(major, dtype, arch) for major in CUDA_MAJORS for dtype in DTYPES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda job: compile_kernels(LIBRARIES[job[0]], job[1], job[2]), jobs)
        return dict(zip(jobs, results))


def test_nvrtc_compiles_every_kernel_without_a_warning_or_a_spill(compiled):
    for (major, dtype, arch), result in compiled.items():
        where = f"NVRTC {major}, {dtype}, sm_{arch}"
        assert result.result == 0, f"{where}: compilation failed:\n{result.log}"
        assert "warning" not in result.log.lower(), f"{where}: warnings:\n{result.log}"
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.log)
        assert spills, f"{where}: no ptxas report in the log:\n{result.log}"
        assert all(s == ("0", "0") for s in spills), f"{where}: register spills:\n{result.log}"
        entries = set(re.findall(r"\.entry (\w+)\(", result.ptx))
        names = set(cuda_backend.PLAIN_KERNELS) | set(result.lowered.values())
        assert names <= entries, f"{where}: kernels the backend loads are missing: {names - entries}"


def test_the_32_bit_instantiations_do_no_64_bit_division(compiled):
    """64-bit integer division is a slow subroutine on the GPU; the int instantiations, which the
    backend launches whenever the sizes allow, must not need it (the long long ones do)."""
    for (major, dtype, arch), result in compiled.items():
        for expression, lowered in result.lowered.items():
            divisions = re.findall(r"\b(?:div|rem)\.[su]64\b", result.entry(lowered))
            if expression.endswith("<int>"):
                assert not divisions, f"NVRTC {major}, {dtype}, sm_{arch}: {expression} divides in 64 bits"
            elif expression.startswith("gather_rows"):
                assert divisions, "the check finds no 64-bit division where there is one"
