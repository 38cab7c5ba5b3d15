"""Summarise a pytest-benchmark JSON of the fastlstm suite as one markdown table.

Usage::

    python bench/report.py /tmp/bench.json

Per workload: the median time of fastlstm and of each alternative, the
speedup (alternative time / fastlstm time), fastlstm's achieved GFLOP/s
(``extra_info["flops"]`` / median), and the target of the Speed issue next to
the ratio it concerns, marked met or missed. Targets are checked on the
entries marked ``primary`` (fastlstm with its defaults); the interleaved A/B
rows of W1/W2 training and W1 inference carry the same targets, measured block
by block.
Cold start and peak RSS, which the suite records in ``extra_info``, are rows
of the same table.
"""

import argparse
import json
import sys

# (workload, alternative label) -> minimum speedup of fastlstm's primary entry.
# The targets are against PyTorch at 2 threads ("torch"); they are also
# shown against PyTorch at 1 thread, which is faster on a loaded machine.
SPEEDUP_TARGETS = {
    ("W1-train", "torch"): 3.0,
    ("W1-train", "torch 1 thread"): 3.0,
    ("W1-infer", "torch"): 2.0,
    ("W1-infer", "torch 1 thread"): 2.0,
    ("W1-infer", "onnxruntime"): 1.25,
    ("W2-train", "torch"): 2.0,
    ("W2-train", "torch 1 thread"): 2.0,
    ("W3-train", "torch"): 1.3,
    ("W3-train", "torch 1 thread"): 1.3,
}
# workload -> minimum GFLOP/s of fastlstm's primary entry.
GFLOPS_TARGETS = {"W3-train": 160.0}
# workload -> maximum median seconds of fastlstm's primary entry.
TIME_TARGETS = {"W4-step": 10e-6, "JV-full": 2.0}
JV_TARGET_EPOCHS = 100
# Cold start, empty numba cache: at most this many seconds beyond the baseline process.
COLD_START_EXTRA_SECONDS = 1.5
# Rows note the CPU other processes took (extra_info "other_cores_busy") above this.
LOAD_NOTE_THRESHOLD = 0.15

WORKLOAD_ORDER = ["W1-train", "W1-infer", "W2-train", "W2-infer", "W3-train", "W3-peak-RSS",
                  "W4-step", "W4-1000-steps", "W4-forecast", "JV-full", "W1-train-busy",
                  "W2-train-busy", "cold-start"]


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def mark(ok):
    return "**met**" if ok else "**missed**"


def load_json(path):
    with open(path) as fh:
        return json.load(fh)


def machine_line(data):
    """One line naming the CPU, Python and the libraries of a run, or None.

    The speedups depend on them as much as on the code: the targets above
    were set from runs on an Intel Xeon, where PyTorch's W1 step took 7.4 ms
    (2.1-4.5 ms on the AMD EPYC of the README's runs).
    """
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    if not cpu and not machine:
        return None
    parts = []
    if cpu:
        described = [str(cpu[key]) for key in ("vendor_id_raw",) if cpu.get(key)]
        described += [f"{key} {cpu[key]}" for key in ("family", "model") if key in cpu]
        described += [f"{cpu['count']} logical CPUs"] if cpu.get("count") else []
        described += [f"{cpu['hz_advertised_friendly']} advertised"] if cpu.get(
            "hz_advertised_friendly") else []
        parts.append(f"{cpu.get('brand_raw', 'unknown CPU')} ({', '.join(described)})")
    if machine.get("python_version"):
        parts.append(f"Python {machine['python_version']}")
    ours = machine.get("fastlstm") or {}
    versions = ours.get("versions") or {}
    installed = [f"{name} {version}" for name, version in versions.items() if version]
    if installed:
        parts.append(", ".join(installed))
    if "own_gemm" in ours:
        # Older JSONs hold True/False, newer ones the instruction set or None.
        own = ours["own_gemm"]
        parts.append("own GEMM " + ({True: "on", False: "off (BLAS)", None: "off (BLAS)"}.get(
            own, f"on ({own})")))
    if ours.get("blas"):
        parts.append("BLAS: " + "; ".join(ours["blas"]))
    if ours.get("openblas_coretype"):
        parts.append(f"OPENBLAS_CORETYPE={ours['openblas_coretype']}")
    return "Run on: " + "; ".join(parts)


def load_entries(data):
    entries = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        if "workload" not in info:
            continue
        info["median"] = bench["stats"]["median"]
        info["name"] = bench["name"]
        entries.append(info)
    return entries


def gflops(entry, seconds=None):
    flops = entry.get("flops")
    seconds = entry["median"] if seconds is None else seconds
    if not flops or not seconds:
        return None
    return flops / seconds / 1e9


def fmt_gflops(value):
    return "-" if value is None else f"{value:.1f}"


def by_workload(entries):
    groups = {}
    for entry in entries:
        groups.setdefault(entry["workload"], []).append(entry)
    order = [w for w in WORKLOAD_ORDER if w in groups] + sorted(set(groups) - set(WORKLOAD_ORDER))
    return [(w, groups[w]) for w in order]


def comparable_seconds(entry):
    """The entry's median, or for a shortened end-to-end fit its time
    extrapolated to the target number of epochs."""
    target = entry.get("target_epochs")
    if target and entry.get("epochs") != target and entry.get("estimate_target_epochs_s"):
        return entry["estimate_target_epochs_s"], True
    return entry["median"], False


def contention_note(*entries):
    """'other processes: 0.8 / 0.1 cores' when other processes took CPU time."""
    values = [e.get("other_cores_busy") for e in entries if e is not None]
    if not any(v is not None and v >= LOAD_NOTE_THRESHOLD for v in values):
        return ""
    shown = " / ".join("?" if v is None else f"{v:.1f}" for v in values)
    return f"other processes used {shown} cores"


def join_notes(*notes):
    return "; ".join(n for n in notes if n)


def timing_rows(workload, entries):
    """Rows of a timed workload: each fastlstm entry against each alternative."""
    rows = []
    fast = sorted((e for e in entries if e["impl"] == "fastlstm"),
                  key=lambda e: (not e.get("primary"), e["label"]))
    alternatives = [e for e in entries if e["impl"] not in ("fastlstm", "interleaved")]
    interleaved = [e for e in entries if e["impl"] == "interleaved"]
    for f in fast:
        targets_here = []
        seconds = f["median"]
        checked, extrapolated = comparable_seconds(f)
        note = ""
        if f.get("epochs"):
            note = (f"{f['epochs']} epochs, test accuracy "
                    f"{f.get('test_accuracy', float('nan')):.3f}")
            if extrapolated:
                note += f"; {fmt_time(checked)} extrapolated to {f['target_epochs']} epochs"
        if f.get("primary") and workload in TIME_TARGETS:
            limit = TIME_TARGETS[workload]
            targets_here.append(f"<= {fmt_time(limit)}: {mark(checked <= limit)}")
        gf = gflops(f)
        if f.get("primary") and workload in GFLOPS_TARGETS:
            limit = GFLOPS_TARGETS[workload]
            targets_here.append(f">= {limit:.0f} GFLOP/s: {mark(gf is not None and gf >= limit)}")
        for a in alternatives or [None]:
            target_cells = list(targets_here)
            speedup = None
            alt_note = note
            if a is not None:
                a_seconds, a_extrapolated = comparable_seconds(a)
                speedup = a_seconds / checked
                if a_extrapolated or extrapolated:
                    alt_note = (alt_note + "; " if alt_note else "") + \
                        f"speedup on times extrapolated to {a.get('target_epochs')} epochs"
                    if a_extrapolated:
                        why = (", stopped at its time budget" if a.get("stopped_at_deadline")
                               else "")
                        alt_note += (f" ({a['label']}: {a['epochs']} epochs run{why}, "
                                     f"{fmt_time(a_seconds)} extrapolated)")
                key = (workload, a["label"])
                if f.get("primary") and key in SPEEDUP_TARGETS:
                    limit = SPEEDUP_TARGETS[key]
                    target_cells.insert(0, f">= {limit:g}x: {mark(speedup >= limit)}")
                if a.get("test_accuracy") is not None:
                    alt_note = (alt_note + "; " if alt_note else "") + \
                        f"{a['label']} test accuracy {a['test_accuracy']:.3f}"
            rows.append([
                workload, f["label"], fmt_time(seconds),
                "-" if a is None else a["label"], "-" if a is None else fmt_time(a["median"]),
                "-" if speedup is None else f"{speedup:.2f}x", fmt_gflops(gf),
                "; ".join(target_cells) or "-", join_notes(alt_note, contention_note(f, a)),
            ])
    for i in interleaved:
        # extra_info: medians_s by library (fastlstm's included), the labels
        # of the alternatives, and what was counted.
        fast_s = i["medians_s"]["fastlstm"]
        for name, label in i["labels"].items():
            alt_s = i["medians_s"][name]
            speedup = alt_s / fast_s
            key = (workload, label)
            target = "-"
            if key in SPEEDUP_TARGETS:
                target = f">= {SPEEDUP_TARGETS[key]:g}x: {mark(speedup >= SPEEDUP_TARGETS[key])}"
            rows.append([
                workload, "fastlstm (interleaved A/B)", fmt_time(fast_s),
                f"{label} (interleaved A/B)", fmt_time(alt_s), f"{speedup:.2f}x",
                fmt_gflops(gflops(i, fast_s)), target,
                join_notes(i.get("counted", ""), contention_note(i)),
            ])
    if not fast:
        for a in alternatives:
            rows.append([workload, "- (skipped)", "-", a["label"], fmt_time(a["median"]), "-",
                         "-", "-", ""])
    return rows


def memory_rows(workload, entries):
    fast = [e for e in entries if e["impl"] == "fastlstm"]
    others = [e for e in entries if e["impl"] != "fastlstm"]
    rows = []
    for f in fast:
        for o in others or [None]:
            ratio = None if o is None else o["peak_rss_mib"] / f["peak_rss_mib"]
            rows.append([
                workload, "fastlstm peak RSS", f"{f['peak_rss_mib']:.0f} MiB",
                "-" if o is None else f"{o['impl']} peak RSS",
                "-" if o is None else f"{o['peak_rss_mib']:.0f} MiB",
                "-" if ratio is None else f"{ratio:.2f}x (memory: alt / fastlstm)",
                "-", "-",
                f"VmHWM of a fresh process, {f.get('n_steps', '?')} training step(s); "
                "after imports+setup: "
                f"fastlstm {f.get('maxrss_after_setup_mib', 0):.0f} MiB"
                + ("" if o is None
                   else f", {o['impl']} {o.get('maxrss_after_setup_mib', 0):.0f} MiB"),
            ])
    return rows


def cold_start_rows(workload, entries):
    baselines = {e.get("kind"): e for e in entries if e["impl"] == "baseline"}
    base = baselines.get("baseline")
    base_sk = baselines.get("baseline-sklearn")
    rows = []
    fast = sorted((e for e in entries if e["impl"] == "fastlstm"),
                  key=lambda e: (e.get("kind") != "empty", not e.get("primary"), e["label"]))
    for f in fast:
        extra = None if base is None else f["median"] - base["median"]
        target = "-"
        if f.get("kind") == "empty" and f.get("primary") and extra is not None:
            ok = extra <= COLD_START_EXTRA_SECONDS
            target = f"<= +{COLD_START_EXTRA_SECONDS:g} s: {mark(ok)}"
        child = f.get("child") or {}
        note = (f"process wall time; inside: import {child.get('import_s', 0):.2f} s, "
                f"fit+predict {child.get('fit_s', 0):.2f} s on {child.get('backend_used', '?')}")
        if base_sk is not None:
            note += f"; +{f['median'] - base_sk['median']:.2f} s beyond {base_sk['label']}"
        note = join_notes(note, contention_note(f, base))
        rows.append([
            workload, f["label"], fmt_time(f["median"]),
            "-" if base is None else base["label"],
            "-" if base is None else fmt_time(base["median"]),
            "-" if extra is None else f"+{extra:.2f} s", "-", target, note,
        ])
    if base_sk is not None and not fast:
        rows.append([workload, "-", "-", base_sk["label"], fmt_time(base_sk["median"]), "-", "-",
                     "-", ""])
    return rows


def build_table(entries):
    header = ["workload", "fastlstm", "fastlstm median", "alternative", "alternative median",
              "speedup (alt / fastlstm)", "fastlstm GFLOP/s", "target", "notes"]
    rows = []
    for workload, group in by_workload(entries):
        if workload == "cold-start":
            rows += cold_start_rows(workload, group)
        elif workload.endswith("peak-RSS"):
            rows += memory_rows(workload, group)
        else:
            rows += timing_rows(workload, group)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    data = load_json(args.json)
    entries = load_entries(data)
    if not entries:
        sys.exit(f"{args.json}: no fastlstm benchmark entries found")
    line = machine_line(data)
    if line:
        print(line + "\n")
    print(build_table(entries))


if __name__ == "__main__":
    main()
