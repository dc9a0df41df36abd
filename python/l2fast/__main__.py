"""The command line: ``l2fast demo | parity | bench`` (or ``python -m l2fast ...``)."""
from __future__ import annotations

import argparse
import sys

from l2fast.backends import BACKENDS, BackendUnavailableError


def main(argv=None):
    from l2fast import __version__

    parser = argparse.ArgumentParser(prog="l2fast", description="L2-regularised dense networks, fast.")
    parser.add_argument("--version", action="version", version=f"l2fast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="L2 at work on handwritten digits: choose lambda, plot the curves")
    demo.add_argument("--backend", default="cpu", choices=BACKENDS)
    demo.add_argument("--quick", action="store_true", help="a smaller run of a few seconds")
    demo.add_argument("--out", default="l2fast-demo", help="folder for the PNG plots (default: l2fast-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")

    parity = commands.add_parser("parity", help="every backend against the NumPy reference; exit 1 on a failure")
    parity.add_argument("--backend", action="append", choices=BACKENDS[1:],
                        help="a backend to check (repeatable; default: every available one)")

    bench = commands.add_parser("bench", help="epoch times against the reference, the peers and the limits")
    bench.add_argument("--configs", default=None,
                       help="comma-separated subset of A,B,C,D,O,S,U (default: all; L runs with B and D), "
                            "or K (under load), N (small networks against their GEMMs alone and JAX), T (seconds "
                            "to the optimum of convex problems against scikit-learn's solvers), P (the same and "
                            "epoch times on sparse, TF-IDF-like X), M (data-parallel scaling over MPI, 1 and 2 "
                            "ranks, and its cost model) and R (the scikit-learn drop-ins against scikit-learn's "
                            "classes), run only when named")
    bench.add_argument("--repeats", type=int, default=5, help="timed epochs per contender after one warm-up")
    bench.add_argument("--quick", action="store_true", help="tiny configurations, for a smoke test")
    bench.add_argument("--json", default=None, help="write the record to this JSON file")
    bench.add_argument("--plot", default=None, help="save a bar chart to this PNG file (needs matplotlib)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from l2fast import demo as module

        try:
            module.run(args.backend, args.quick, args.out, progress=not args.quiet)
        except BackendUnavailableError as exc:
            parser.exit(2, f"l2fast: {exc}\n")
        return 0
    if args.command == "parity":
        from l2fast import parity as module

        try:
            rows = module.run(args.backend)
        except BackendUnavailableError as exc:
            parser.exit(2, f"l2fast: {exc}\n")
        return 0 if all(r.passed for r in rows) else 1
    from l2fast import bench as module

    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    configs = None if args.configs is None else set(args.configs.upper().split(","))
    module.run(configs, repeats=args.repeats, quick=args.quick, json_path=args.json, plot_path=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
