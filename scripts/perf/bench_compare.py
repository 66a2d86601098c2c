#!/usr/bin/env python3
"""Compares `flashattn bench --save` reports case by case, so that a difference of a few percent can be told from
run-to-run noise.

Two questions, one per form of the arguments:

  bench_compare.py run1.json run2.json run3.json
      Ours against each baseline of the same run (SDPA flash, cuDNN, ...), in every run, and the median over the
      runs. A case is "below" a baseline only when ours is slower in every run; "level" when the runs disagree.

  bench_compare.py main=a1.json main=a2.json cand=b1.json cand=b2.json
      Ours of each labelled group of reports (one library each, timed alternately in one device call) against the
      first group: per case, each run's figure and the ratio of the groups' means.

The figure is GB/s for decode cases and TFLOP/s for the others, as the bench table prints them. Only rows whose
status is ok count; a case missing from a report is left out of that report's column.
"""
import argparse
import json
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"bench_compare: cannot read {path}: {e}")
    if not isinstance(report, dict) or "cases" not in report or "measurements" not in report:
        sys.exit(f"bench_compare: {path} is not a flashattn bench report (no cases / measurements)")
    return report


def figures(report):
    """{case id: {impl: figure}} and the case ids in the report's order, with the figure each case is judged by."""
    kind = {c["id"]: c.get("kind", "prefill") for c in report["cases"]}
    table = {}
    for m in report["measurements"]:
        if m.get("status") != "ok":
            continue
        metric = "gbps" if kind.get(m["caseId"]) == "decode" else "tflops"
        if m.get(metric) is not None:
            table.setdefault(m["caseId"], {})[m["impl"]] = m[metric]
    return table, [c["id"] for c in report["cases"]]


def ours_impl(table, name):
    if name:
        return name
    for impls in table.values():
        for impl in impls:
            if impl.startswith("flashattn-"):
                return impl
    sys.exit("bench_compare: no row of ours (flashattn-*) in the reports; name it with --ours")


def against_baselines(paths, ours):
    runs = [figures(load(p)) for p in paths]
    order = runs[0][1]
    ours = ours_impl(runs[0][0], ours)
    baselines = sorted({impl for table, _ in runs for row in table.values() for impl in row if impl != ours})
    width = max([len(c) for c in order] + [4])
    print(f"ours ({ours}) / baseline in each of {len(runs)} runs, then the median; "
          "below / above: in every run, level: the runs disagree")
    for case in order:
        cells = []
        for b in baselines:
            ratios = [t[case][ours] / t[case][b] for t, _ in runs if case in t and ours in t[case] and b in t[case]]
            if not ratios:
                continue
            verdict = "below" if max(ratios) < 1 else "above" if min(ratios) > 1 else "level"
            cells.append(f"{b} {'/'.join(f'{r:.3f}' for r in ratios)} med {statistics.median(ratios):.3f} {verdict}")
        ours_runs = [t[case][ours] for t, _ in runs if case in t and ours in t[case]]
        if ours_runs:
            print(f"{case:<{width}}  ours {'/'.join(f'{v:.0f}' for v in ours_runs)}  " + "  ".join(cells))


def between_groups(labelled, ours):
    groups = {}
    for label, path in labelled:
        groups.setdefault(label, []).append(figures(load(path)))
    labels = list(groups)
    order = groups[labels[0]][0][1]
    ours = ours_impl(groups[labels[0]][0][0], ours)
    width = max([len(c) for c in order] + [4])
    print(f"ours ({ours}) per group: each run's figure, then (mean / the mean of '{labels[0]}')")
    for case in order:
        means = {}
        cells = []
        for label in labels:
            vals = [t[case][ours] for t, _ in groups[label] if case in t and ours in t[case]]
            if not vals:
                continue
            means[label] = statistics.mean(vals)
            ref = means.get(labels[0])
            rel = f" ({means[label] / ref:.3f})" if ref else ""
            cells.append(f"{label} {'/'.join(f'{v:.0f}' for v in vals)}{rel}")
        if cells:
            print(f"{case:<{width}}  " + "  ".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="bench --save reports; LABEL=FILE groups them by library")
    ap.add_argument("--ours", help="our implementation's name in the reports (default: the first flashattn-*)")
    args = ap.parse_args()
    labelled = [r.split("=", 1) for r in args.reports if "=" in r]
    if labelled and len(labelled) != len(args.reports):
        sys.exit("bench_compare: label every report (LABEL=FILE) or none")
    if labelled:
        between_groups(labelled, args.ours)
    else:
        against_baselines(args.reports, args.ours)


if __name__ == "__main__":
    main()
