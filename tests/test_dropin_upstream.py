"""scikit-learn's own tests of MLPClassifier, MLPRegressor and LogisticRegression, run against l2fast's drop-ins.

The test files come from the installed scikit-learn wheel (pinned below): each is read, one import line is
added after its imports so that the classes' names are l2fast's, and it is run as a module here; nothing
of scikit-learn's is copied into this repository. Every upstream test is collected into this module but
those in LEFT_OUT, each with its reason; ``test_left_out_tests_exist`` keeps that list honest against the
pinned version.
"""
import ast
import functools
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn

SCIKIT_LEARN = "1.9.1"  # the version whose test files the LEFT_OUT lists below were made for

PRIVATE = "tests scikit-learn's private functions"
ARRAY_API = "array API namespaces other than NumPy: l2fast takes NumPy arrays (CuPy on cuda)"
LIBLINEAR = "runs solver='liblinear', which the drop-in refuses (it penalises the intercept: another problem)"
L1 = "fits L1 or elastic-net penalties, which the drop-in refuses"
NEWTON = ("newton-cg/newton-cholesky specific: the L-BFGS-B that serves them needs more iterations than Newton "
          "steps, so it stops short of tol within their max_iter")
LEFT_OUT = {
    "sklearn.neural_network.tests.test_mlp": {
        "test_gradient": PRIVATE + " (_forward_pass, _backprop, _loss_grad_lbfgs)",
    },
    "sklearn.linear_model.tests.test_logistic": {
        "test_logistic_regression_array_api_compliance": ARRAY_API,
        "test_logistic_regression_array_api_warm_start": ARRAY_API,
        "test_consistency_path": PRIVATE + " (_logistic_regression_path), with liblinear",
        "test_logistic_cv_multinomial_score": PRIVATE + " (_log_reg_scoring_path)",
        "test_check_solver_option": "checks liblinear's and L1's own error messages; the drop-in refuses them first",
        "test_elasticnet_l1_ratio_err_helpful": L1,
        "test_liblinear_dual_random_state": LIBLINEAR,
        "test_logistic_cv": "compares LogisticRegressionCV with " + LIBLINEAR,
        "test_logistic_regression_solvers": "compares every solver with " + LIBLINEAR,
        "test_sample_and_class_weight_equivalence_liblinear": LIBLINEAR,
        "test_logistic_regression_class_weights": LIBLINEAR,
        "test_liblinear_decision_function_zero": LIBLINEAR,
        "test_logisticregression_liblinear_sample_weight": LIBLINEAR,
        "test_liblinear_with_large_values": LIBLINEAR,
        "test_liblinear_not_stuck": LIBLINEAR,
        "test_liblinear_multiclass_raises": "checks liblinear's own error message; the drop-in refuses liblinear",
        "test_saga_vs_liblinear": LIBLINEAR + "; L1",
        "test_logreg_l1": L1,
        "test_logistic_regression_cv_refit": L1,
        "test_elastic_net_coeffs": L1,
        "test_elastic_net_l1_l2_equivalence": L1,
        "test_elastic_net_vs_l1_l2": L1,
        "test_LogisticRegression_elastic_net_objective": L1,
        "test_LogisticRegressionCV_GridSearchCV_elastic_net": L1,
        "test_elastic_net_versus_sgd": L1,
        "test_scores_attribute_layout_elasticnet": L1,
        "test_lr_penalty_l1ratio_incompatible": L1,
        "test_l1_ratio_non_elasticnet": L1,
        "test_logisticregressioncv_warns_with_use_legacy_attributes": "tests LogisticRegressionCV alone (scikit-learn's "
                                                                       "class), whose ConvergenceWarning is an error "
                                                                       "under this project's filterwarnings",
        "test_logistic_regression_solvers_multiclass": NEWTON,
        "test_LogisticRegressionCV_on_folds": NEWTON,
        "test_warm_start_newton_solver": NEWTON + " (two Newton steps equal one plus a warm-started one)",
        "test_newton_cholesky_fallback_to_lbfgs": NEWTON + " (its own fall-back to lbfgs)",
        "test_logistic_regression_callback_support": "scikit-learn's experimental callback API (sklearn.callback) is "
                                                     "not called by l2fast's solver",
    },
}
# Tests run for every solver: their solver="liblinear" cases check instead that the drop-in refuses it.
REFUSED_LIBLINEAR = {"test_dtype_match", "test_n_iter", "test_zero_max_iter", "test_logistic_regression_sample_weights",
                     "test_logistic_regression_solver_class_weights", "test_max_iter", "test_large_sparse_matrix"}
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


def _refusing_liblinear(test):
    """The upstream test; its solver="liblinear" cases check instead that the drop-in refuses liblinear."""

    @functools.wraps(test)
    def refusing(*args, **kwargs):
        if kwargs.get("solver") != "liblinear":
            return test(*args, **kwargs)
        from l2fast.sklearn import LogisticRegression

        with pytest.raises(ValueError, match="solver='liblinear' penalises the intercept"):
            LogisticRegression(solver="liblinear").fit([[0.0], [1.0], [2.0]], [0, 1, 1])

    return refusing


# sag and saga refuse sparse X with 64-bit indices; the L-BFGS that serves them in the drop-in takes it: these
# tests' sag/saga cases check that the drop-in fits where scikit-learn expects the refusal.
SAG_64BIT_INDICES = {"test_large_sparse_matrix"}


def _fitting_64bit_indices(test):
    """The upstream test; its sag/saga cases check instead that the drop-in fits (does not raise)."""

    @functools.wraps(test)
    def fitting(*args, **kwargs):
        if kwargs.get("solver") not in ("sag", "saga"):
            return test(*args, **kwargs)
        with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
            test(*args, **kwargs)

    return fitting


_modules = {name: _upstream(name, names) for name, names in REPLACED.items()}
for _name, _module in _modules.items():
    for _test, _function in vars(_module).items():
        if _test.startswith("test_") and callable(_function) and _test not in LEFT_OUT[_name]:
            if _test in SAG_64BIT_INDICES:
                _function = _fitting_64bit_indices(_function)
            if _test in REFUSED_LIBLINEAR:
                _function = _refusing_liblinear(_function)
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
