#!/usr/bin/env python3
"""report.py: one report of a benchmark run, from the JSON the benchmarks
wrote into a results directory.

    python3 bench/report.py --results build/bench/results --out build/bench

Reads
  <results>/<workload>.json  written by `strata bench WORKLOAD --json`: a
                             list of results (train, embed, shared)
  <results>/<program>.json   Google Benchmark output (--benchmark_out) of
                             the microbenchmarks: each `X/strata` beside
                             every other side of X (`X/baseline`, `X/floor`,
                             or a named alternative such as `X/memcpy`)
and writes
  <out>/report.json  a list, one object per workload, size and baseline:
                     name, metric, strata, baseline, baseline_name, unit,
                     ratio, working_set_bytes, ... (microbenchmark pairs
                     too, with "kind": "micro" and no working set)
  <out>/report.md    the same as tables, with the machine and the date
  <out>/<workload>.png  throughput against working-set size, one line per
                     side (PNG through matplotlib; left out, and said so in
                     report.md, where matplotlib is missing)

`meson test -C build --benchmark` runs it last. Exits 1 when the results
directory holds nothing it can read.
"""

import argparse
import datetime
import json
import os
import platform
import sys

WORKLOAD_ORDER = ["train", "embed", "shared", "gpu"]


def load_results(results_dir):
    workloads, micro = [], []
    for name in sorted(os.listdir(results_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(results_dir, name)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            print(f"report.py: skipping {path}: {e}", file=sys.stderr)
            continue
        if isinstance(data, list):
            workloads.extend(r for r in data if isinstance(r, dict) and "name" in r)
        elif isinstance(data, dict) and "benchmarks" in data:
            micro.extend(pair_micro(data["benchmarks"], name[:-5]))
    workloads.sort(key=lambda r: (WORKLOAD_ORDER.index(r["name"])
                                  if r["name"] in WORKLOAD_ORDER else 99,
                                  r.get("metric", ""), r.get("working_set_bytes", 0),
                                  r.get("baseline_name", "")))
    return workloads, micro


def rate_of(b):
    """(value, unit, higher_is_better) of one Google Benchmark entry."""
    for key, unit in (("bytes_per_second", "bytes/s"), ("items_per_second", "items/s")):
        if key in b:
            return b[key], unit, True
    return b.get("real_time", 0.0), b.get("time_unit", "ns"), False


# Google Benchmark's marks of which clock timed a run: the engine's side is
# often timed by the wall clock and a raw baseline by its own (manual) one,
# and they name the same benchmark all the same.
TIMING_MARKS = {"real_time", "manual_time", "process_time"}
FIRST_SIDES = ("baseline", "floor")


def pair_micro(benchmarks, program):
    """X/strata beside every other side of X (its baseline, its floor, or the
    alternative it names, such as memcpy), medians where there are any.
    X keeps its arguments (threads:2 and threads:1 are two rows)."""
    by_parts = {}
    for b in benchmarks:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b.get("name", ""))
        parts = tuple(p for p in name.split("/") if p not in TIMING_MARKS)
        by_parts.setdefault(parts, b)
    pairs = []
    for parts, b in by_parts.items():
        if "strata" not in parts:
            continue
        i = parts.index("strata")
        others = [(o_parts[i], o) for o_parts, o in by_parts.items()
                  if len(o_parts) == len(parts) and o_parts[i] != "strata"
                  and o_parts[:i] == parts[:i] and o_parts[i + 1:] == parts[i + 1:]]
        others.sort(key=lambda so: (FIRST_SIDES.index(so[0])
                                    if so[0] in FIRST_SIDES else len(FIRST_SIDES), so[0]))
        for other, o in others:
            s_val, unit, higher = rate_of(b)
            o_val, _, _ = rate_of(o)
            if not s_val or not o_val:
                continue
            pairs.append({
                "kind": "micro", "program": program,
                "name": "/".join(parts[:i] + parts[i + 1:]),
                "metric": unit, "strata": s_val, "baseline": o_val,
                "baseline_name": other, "unit": unit, "higher_is_better": higher,
                "ratio": s_val / o_val, "working_set_bytes": None,
            })
    return pairs


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = human_bytes(kib * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, "
            f"Linux {platform.release()}")


def plot(workloads, out_dir):
    """One PNG per workload; returns the files written, or why none."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is missing (apt-get install python3-matplotlib): no plots"
    written = []
    for name in WORKLOAD_ORDER:
        rows = [r for r in workloads if r["name"] == name
                and r.get("metric") != "ram_used" and r.get("working_set_bytes")]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        series = {"strata": {}}
        for r in rows:
            ws = r["working_set_bytes"]
            series["strata"][ws] = throughput(r, r["strata"])
            series.setdefault(r["baseline_name"], {})[ws] = throughput(r, r["baseline"])
        for label, points in series.items():
            xs = sorted(points)
            ax.plot([x / 2**20 for x in xs], [points[x] for x in xs], marker="o",
                    label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("working set (MiB)")
        ax.set_ylabel(throughput_unit(rows[0]))
        ax.set_title(f"{name}: throughput against working set")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, None


def throughput(r, value):
    """Higher is better: rates as they are, times turned into work per second."""
    if r.get("higher_is_better"):
        return value
    if value <= 0:
        return 0.0
    work = r["working_set_bytes"] * r.get("extra", {}).get("readers", 1)
    return work / value / 2**20


def throughput_unit(r):
    return r["unit"] if r.get("higher_is_better") else "MiB/s"


def markdown(workloads, micro, plots, plot_note, when):
    lines = [f"# Strata benchmark report", "",
             f"- Machine: {machine()}",
             f"- Date: {when}",
             "- Command: `meson test -C build --benchmark` "
             "(or `strata bench all --json FILE` and `bench/report.py`)", ""]
    if workloads:
        lines += ["## Workloads", "",
                  "Each workload beside what a user would do without Strata, "
                  "measured in the same run; `scale` is the working set over the "
                  "capacity of the workload's fastest tier. `ratio` is strata / "
                  "baseline (for times lower is better, for rates higher).", "",
                  "| workload | metric | scale | working set | strata | baseline | "
                  "baseline name | ratio | unit | figures |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in workloads:
            extra = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(r.get("extra", {}).items()))
            if r.get("policy"):
                extra = f"policy {r['policy']}, {extra}"
            if r.get("note"):
                extra = f"**{r['note']}**; {extra}"
            lines.append(
                f"| {r['name']} | {r.get('metric', '')} | {fmt_scale(r.get('scale'))} | "
                f"{human_bytes(r.get('working_set_bytes') or 0)} | {fmt(r['strata'])} | "
                f"{fmt(r['baseline'])} | {r['baseline_name']} | {fmt_ratio(r.get('ratio'))} | "
                f"{r['unit']} | {extra} |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                     for p in plots] + [""]
    elif plot_note:
        lines += [f"Plots: {plot_note}.", ""]
    if micro:
        lines += ["## Microbenchmarks", "",
                  "Each `X/strata` beside every other side of X in the same "
                  "program and run: `X/baseline`, `X/floor`, or the alternative "
                  "it names (medians where repetitions ran).", "",
                  "| program | benchmark | strata | baseline | against | ratio | unit |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in micro:
            lines.append(f"| {m['program']} | {m['name']} | {fmt(m['strata'])} | "
                         f"{fmt(m['baseline'])} | {m['baseline_name']} | "
                         f"{fmt_ratio(m.get('ratio'))} | {m['unit']} |")
        lines.append("")
    return "\n".join(lines)


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_ratio(v):
    """A ratio in bold; "n/a" where there is none (a baseline of 0 makes
    it infinite, which the workloads' JSON writes as null)."""
    return f"**{v:.3f}**" if isinstance(v, (int, float)) else "n/a"


def fmt_scale(v):
    return f"{v:.3g}x" if isinstance(v, (int, float)) else "n/a"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="directory of result JSON files")
    p.add_argument("--out", required=True, help="directory for report.json, report.md, plots")
    args = p.parse_args()
    if not os.path.isdir(args.results):
        print(f"report.py: {args.results} is not a directory: run the benchmarks "
              "first (meson test -C build --benchmark)", file=sys.stderr)
        return 1
    workloads, micro = load_results(args.results)
    if not workloads and not micro:
        print(f"report.py: no results in {args.results}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    plots, plot_note = plot(workloads, args.out)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(workloads + micro, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(workloads, micro, plots, plot_note, when))
    print(f"report.py: {len(workloads)} workload results, {len(micro)} microbenchmark "
          f"pairs -> {os.path.join(args.out, 'report.md')}"
          + (f", {len(plots)} plots" if plots else f" ({plot_note})" if plot_note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
