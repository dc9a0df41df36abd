"""scikit-learn's own tests of MLPClassifier, MLPRegressor and LogisticRegression, run against l2fast's drop-ins.

The test files come from the installed scikit-learn wheel (pinned below): each is read, one import line is
added after its imports so that the classes' names are l2fast's, and it is run as a module here; nothing
of scikit-learn's is copied into this repository. Every upstream test is collected into this module but
those in LEFT_OUT, each with its reason; ``test_left_out_tests_exist`` keeps that list honest against the
pinned version.
"""
import ast
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sklearn

SCIKIT_LEARN = "1.9.1"  # the version whose test files the LEFT_OUT lists below were made for

PRIVATE = "tests scikit-learn's private functions"
ARRAY_API = "array API namespaces other than NumPy: l2fast takes NumPy arrays (CuPy on cuda)"
LEFT_OUT = {
    "sklearn.neural_network.tests.test_mlp": {
        "test_gradient": PRIVATE + " (_forward_pass, _backprop, _loss_grad_lbfgs)",
    },
    "sklearn.linear_model.tests.test_logistic": {
        "test_logistic_regression_array_api_compliance": ARRAY_API,
        "test_logistic_regression_array_api_warm_start": ARRAY_API,
    },
}
REPLACED = {"sklearn.neural_network.tests.test_mlp": ("MLPClassifier", "MLPRegressor"),
            "sklearn.linear_model.tests.test_logistic": ("LogisticRegression",)}


def _upstream(module_name, names):
    """The upstream test module with ``names`` bound to l2fast.sklearn's classes, as a new module."""
    path = Path(importlib.util.find_spec(module_name).origin)
    source = path.read_text()
    tree = ast.parse(source)
    last_import = max(node.end_lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    lines = source.splitlines(keepends=True)
    lines.insert(last_import, f"from l2fast.sklearn import {', '.join(names)}  # l2fast: the drop-ins\n")
    module = types.ModuleType("l2fast_upstream." + module_name)
    module.__file__ = str(path)
    sys.modules[module.__name__] = module
    exec(compile("".join(lines), str(path), "exec"), module.__dict__)
    return module


_modules = {name: _upstream(name, names) for name, names in REPLACED.items()}
for _name, _module in _modules.items():
    for _test, _function in vars(_module).items():
        if _test.startswith("test_") and callable(_function) and _test not in LEFT_OUT[_name]:
            globals()[f"{_test}__{_name.rsplit('.', 1)[1]}"] = _function


# the upstream modules' own marks (warning filters) hold for their tests here
pytestmark = [mark for module in _modules.values()
              for mark in (lambda marks: marks if isinstance(marks, list) else [marks])(getattr(module, "pytestmark", []))]


@pytest.fixture
def global_random_seed():
    """scikit-learn's conftest fixture, at its default seed."""
    return 42


def test_pinned_scikit_learn_version():
    assert sklearn.__version__ == SCIKIT_LEARN, (
        f"these suites and their LEFT_OUT lists were made for scikit-learn {SCIKIT_LEARN}, installed is "
        f"{sklearn.__version__}: rerun them and update the lists")


def test_left_out_tests_exist():
    for name, left_out in LEFT_OUT.items():
        assert set(left_out) <= {t for t in vars(_modules[name]) if t.startswith("test_")}, name


def test_upstream_modules_use_the_drop_ins():
    import l2fast.sklearn as ours

    for name, names in REPLACED.items():
        for cls in names:
            assert getattr(_modules[name], cls) is getattr(ours, cls)
    assert np.isfinite(1.0)
