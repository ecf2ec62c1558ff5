"""``diffperception bench``: run benchmark scenarios, or render the report from results.

Examples:
    diffperception bench --suite tiny --out benchmarks/results/tiny.jsonl
    diffperception bench --scenarios sd15-512-b1-up_ft.1-t261-trunk-specialized-float32-cpu
    diffperception bench --list
    diffperception bench --report benchmarks/results/sd15.jsonl
    diffperception bench --report --readme README.md   # REPORT.md, plots and the README table

A scenario measured while other processes used the CPUs is marked ``loaded`` in its result line
(``benchmarks/runner.py`` gives the rule); the report and the README table leave its timings out.
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
    parser.add_argument("--readme", type=Path, default=None,
                        help="with --report: also rewrite the benchmark table between the "
                             "benchmark-summary markers of this README")
    parser.add_argument("--load-limit", type=float, default=None,
                        help="other processes' CPU use (cores) above which a scenario is marked "
                             "as measured under load (default: runner.LOAD_LIMIT_CORES)")
    parser.add_argument("--quiet-sample", type=float, default=None,
                        help="seconds of other processes' CPU use sampled before each scenario "
                             "(default: runner.QUIET_SAMPLE_S; 0 skips it)")
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
        if args.readme is not None:
            from .report import load_results, update_readme

            print(update_readme(args.readme, load_results(paths)))
        return 0
    if args.readme is not None:
        raise ValueError("--readme goes with --report (it renders the README table from results).")
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
    from .runner import LOAD_LIMIT_CORES, QUIET_SAMPLE_S

    results = run_scenarios(
        scenarios, out, cache_dir=args.cache_dir, timeout=args.timeout,
        load_limit=LOAD_LIMIT_CORES if args.load_limit is None else args.load_limit,
        quiet_sample_s=QUIET_SAMPLE_S if args.quiet_sample is None else args.quiet_sample)
    print(f"{len(results)} result line(s) appended to {out}")
    return 0 if all(r["status"] == "ok" for r in results) else 1
