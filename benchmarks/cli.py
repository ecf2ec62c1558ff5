"""``diffperception bench``: run benchmark scenarios, or render the report from results.

Examples:
    diffperception bench --suite tiny --out benchmarks/results/tiny.jsonl
    diffperception bench --scenarios sd15-512-b1-up_ft.1-t261-trunk-specialized-float32-cpu
    diffperception bench --list
    diffperception bench --report benchmarks/results/sd15.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]

RESULTS_DIR = Path(__file__).parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--suite", help="a named scenario set (see --list), or 'all'")
    what.add_argument("--scenarios", help="comma-separated scenario keys (see --list)")
    what.add_argument("--list", action="store_true", help="list the suites and their scenarios")
    what.add_argument("--report", nargs="*", type=Path, metavar="JSONL",
                      help="render REPORT.md and plots from these result files "
                           "(default: every *.jsonl in benchmarks/results)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON-lines file results are appended to "
                             "(default: benchmarks/results/<suite>.jsonl)")
    parser.add_argument("--report-dir", type=Path, default=RESULTS_DIR,
                        help="where REPORT.md and the PNG plots are written")
    parser.add_argument("--note", default="", help="a paragraph put under the report's header "
                        "(e.g. what else ran on the machine)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="models, references and artifacts (default: $TMPDIR/diffperception-bench)")
    parser.add_argument("--iters", type=int, default=None, help="override the timed calls")
    parser.add_argument("--warmup", type=int, default=None, help="override the warm-up calls")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one step of one scenario may take")


def _by_key(keys: list[str]):
    from .suites import SUITES

    known = {s.key: s for make in SUITES.values() for s in make()}
    missing = [k for k in keys if k not in known]
    if missing:
        raise ValueError(f"Unknown scenario(s) {missing}; `diffperception bench --list` lists them.")
    return [known[k] for k in keys]


def _list() -> int:
    from .suites import SUITES

    for name, make in SUITES.items():
        print(f"{name}:")
        for s in make():
            print(f"  {s.key}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs ``bench``; returns the exit status."""
    from dataclasses import replace

    if args.list:
        return _list()
    if args.report is not None:
        from .report import write_report

        paths = args.report or sorted(RESULTS_DIR.glob("*.jsonl"))
        print(write_report(paths, args.report_dir, title_note=args.note))
        return 0
    from .runner import run_scenarios
    from .suites import suite

    if args.suite:
        scenarios, label = suite(args.suite), args.suite
    elif args.scenarios:
        scenarios, label = _by_key([k.strip() for k in args.scenarios.split(",") if k.strip()]), "custom"
    else:
        raise ValueError("Choose what to run: --suite NAME, --scenarios KEY[,KEY...], --list or --report.")
    overrides = {k: getattr(args, k) for k in ("iters", "warmup") if getattr(args, k) is not None}
    scenarios = [replace(s, **overrides) for s in scenarios]
    out = args.out or RESULTS_DIR / f"{label}.jsonl"
    results = run_scenarios(scenarios, out, cache_dir=args.cache_dir, timeout=args.timeout)
    print(f"{len(results)} result line(s) appended to {out}")
    return 0 if all(r["status"] == "ok" for r in results) else 1
