"""Zero-code-change acceleration: ``python -m l2fast.accel script.py [args]`` (or ``-m module [args]``) runs
an unchanged scikit-learn script with l2fast's MLPClassifier, MLPRegressor and LogisticRegression (see
``l2fast.sklearn.patch``); ``L2FAST_BACKEND`` picks the backend (default "cpu")."""
from __future__ import annotations

import os
import runpy
import sys

USAGE = "usage: python -m l2fast.accel script.py [args ...]  |  python -m l2fast.accel -m module [args ...]"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(0 if argv else 2)
    from l2fast.sklearn import patch

    patch()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
