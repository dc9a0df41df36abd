"""The drop-ins against scikit-learn's classes on their default settings, across shapes: what a user who writes
``MLPClassifier()`` or ``LogisticRegression()`` gets (bench R holds the issue's own cases).

Each case fits scikit-learn's class and l2fast's drop-in with the same arguments (the MLPs 10 epochs, ``tol=0``, so
that both take the same steps; lbfgs and LogisticRegression to their tolerance), after a warm-up fit of each; then
``--repeats`` fits of each, alternating and taking turns to go first, each after a 0.25 s pause as bench R does.
Prints the medians and their ratio, with the load average before and after.

    python benchmarks/dropin_defaults.py [--repeats 5] [--only TEXT]
"""
import argparse
import os
import statistics
import time
import warnings

import numpy as np


def cases():
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X_digits, y_digits = load_digits(return_X_y=True)
    X_digits = StandardScaler().fit_transform(X_digits)

    def labels(m, n, k=10):
        X = rng.standard_normal((m, n))
        return X, (X[:, :10] @ rng.standard_normal((10, k))).argmax(axis=1)

    def values(m, n):
        X = rng.standard_normal((m, n))
        return X, X[:, :5] @ rng.standard_normal(5) + 0.1 * rng.standard_normal(m)

    return [
        ("MLPClassifier(), digits 1797x64", "MLPClassifier", {}, X_digits, y_digits),
        ("MLPClassifier(solver='sgd'), digits", "MLPClassifier", {"solver": "sgd"}, X_digits, y_digits),
        ("MLPClassifier(), 20000x64", "MLPClassifier", {}, *labels(20000, 64)),
        ("MLPClassifier(), 10000x784", "MLPClassifier", {}, *labels(10000, 784)),
        ("MLPClassifier(), 20000x20", "MLPClassifier", {}, *labels(20000, 20)),
        ("MLPRegressor(), 20000x8", "MLPRegressor", {}, *values(20000, 8)),
        ("MLPRegressor(), 20000x64", "MLPRegressor", {}, *values(20000, 64)),
        ("MLPClassifier(solver='lbfgs'), digits", "MLPClassifier", {"solver": "lbfgs"}, X_digits, y_digits),
        ("LogisticRegression(max_iter=1000), digits", "LogisticRegression", {"max_iter": 1000}, X_digits, y_digits),
        ("LogisticRegression(), 20000x20 binary", "LogisticRegression", {}, *labels(20000, 20, 2)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    import sklearn.linear_model
    import sklearn.neural_network

    from l2fast.sklearn import _dropin

    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for name, cls, params, X, y in cases():
        if args.only not in name:
            continue
        params = dict(params)
        if cls != "LogisticRegression":
            params["random_state"] = 0
            if params.get("solver") != "lbfgs":
                params.update(max_iter=10, tol=0.0, n_iter_no_change=10**6)
        theirs = getattr(sklearn.linear_model if cls == "LogisticRegression" else sklearn.neural_network, cls)
        contenders = {"scikit-learn": theirs, "l2fast": getattr(_dropin, cls)}
        times = {who: [] for who in contenders}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for make in contenders.values():
                make(**params).fit(X[:300], y[:300])
            for repeat in range(args.repeats):
                for who in list(contenders)[:: 1 if repeat % 2 == 0 else -1]:
                    est = contenders[who](**params)
                    time.sleep(0.25)
                    start = time.perf_counter()
                    est.fit(X, y)
                    times[who].append(time.perf_counter() - start)
        sk, l2 = (statistics.median(times[who]) for who in contenders)
        print(f"{name:44} scikit-learn {sk * 1e3:8.1f} ms   l2fast {l2 * 1e3:7.1f} ms   {sk / l2:5.1f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
