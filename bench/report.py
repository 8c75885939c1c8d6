"""Turn bench/run.py's results into docs/benchmarks.md, its JSON and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from subjects import OPS


def fmt(us: float) -> str:
    if us >= 100_000:
        return f"{us / 1000:,.0f} ms"
    if us >= 1000:
        return f"{us / 1000:,.1f} ms"
    return f"{us:,.1f} µs"


def med(results: dict[str, Any], subject: str, size: int, op: str) -> float:
    return float(results["single"][subject][str(size)][op]["median_us"])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def target_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met?, where) for every target of the benchmark issue."""
    sizes = results["sizes"]
    rows = []

    def check(name: str, value: float, limit: float, *, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        rows.append((name, f"{value:.2f}x", "met" if met else "**missed**"))

    for size in sizes:
        check(
            f"get ≤ 1.5x raw ({size:,})",
            med(results, "sqlite", size, "get") / med(results, "raw", size, "get"),
            1.5,
        )
    for size in sizes:
        for op in ("register_new", "register_existing"):
            check(
                f"{op} ≤ 1.25x raw ({size:,})",
                med(results, "sqlite", size, op) / med(results, "raw", size, op),
                1.25,
            )
    for size in sizes:
        check(
            f"open+get+close ≤ 2x raw ({size:,})",
            med(results, "sqlite", size, "open_get_close")
            / med(results, "raw", size, "open_get_close"),
            2.0,
        )
    low, high = min(sizes), max(sizes)
    for op in ("get_by_ppid", "notify_list"):
        check(
            f"{op} growth {low:,} → {high:,} ≤ 1.2x",
            med(results, "sqlite", high, op) / med(results, "sqlite", low, op),
            1.2,
        )
    contention = results["contention"]
    if "8" in contention.get("sqlite", {}) and "8" in contention.get("raw", {}):
        ours, raw = contention["sqlite"]["8"], contention["raw"]["8"]
        check(
            "8-process throughput ≥ 0.7x raw",
            ours["throughput"] / raw["throughput"],
            0.7,
            at_most=False,
        )
        rows.append(
            (
                "8-process p99 ≤ 10 ms",
                f"{ours['p99_ms']:.1f} ms",
                "met" if ours["p99_ms"] <= 10 else "**missed**",
            )
        )
    if "diskcache" in results["single"]:
        for size in sizes:
            behind = [
                op
                for op in OPS
                if med(results, "sqlite", size, op) > med(results, "diskcache", size, op)
            ]
            worst = max(
                OPS,
                key=lambda op: (
                    med(results, "sqlite", size, op) / med(results, "diskcache", size, op)
                ),
            )
            value = med(results, "sqlite", size, worst) / med(results, "diskcache", size, worst)
            rows.append(
                (
                    f"every op at or ahead of diskcache ({size:,})",
                    f"worst: {worst} {value:.2f}x",
                    "met" if not behind else f"**missed** ({', '.join(behind)})",
                )
            )
    if "legacy" in results["single"] and "json" in results["single"] and 1000 in sizes:
        slowest = min(
            OPS, key=lambda op: med(results, "legacy", 1000, op) / med(results, "json", 1000, op)
        )
        value = med(results, "legacy", 1000, slowest) / med(results, "json", 1000, slowest)
        rows.append(
            (
                "json ≥ 2x faster than legacy (1,000), every op",
                f"least: {slowest} {value:.2f}x",
                "met" if value >= 2 else "**missed**",
            )
        )
    return [(name, value, met, "") for name, value, met in rows]


def plots(results: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = list(results["single"])
    sizes = results["sizes"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, op in zip(
        axes.flat, ("get", "register_existing", "get_by_ppid", "notify_list"), strict=True
    ):
        for name in names:
            ax.plot(sizes, [med(results, name, s, op) for s in sizes], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("sessions in the store")
        ax.set_ylabel("median latency (µs)")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    latency = folder / "latency_vs_size.png"
    figure.savefig(latency, dpi=90)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(7, 4.5))
    for name, by_procs in results["contention"].items():
        procs = sorted(int(p) for p in by_procs)
        ax.plot(procs, [by_procs[str(p)]["throughput"] for p in procs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("processes writing at once")
    ax.set_ylabel("operations per second (all processes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    throughput = folder / "throughput_vs_processes.png"
    figure.savefig(throughput, dpi=90)
    plt.close(figure)
    return [latency.name, throughput.name]


def write_report(results: dict[str, Any], out: Path) -> None:
    images = plots(results, out.parent / "img")
    (out.parent / "benchmark-results.json").write_text(json.dumps(results, indent=1) + "\n")
    names = list(results["single"])
    sizes = results["sizes"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured on {results['date']}: {results['machine']}.",
        f"Command: `{results['command']}` (took {results['elapsed_s'] / 60:.0f} minutes); raw numbers in",
        "[benchmark-results.json](benchmark-results.json). Every figure below comes from that one run.",
        "",
        "Subjects (see `bench/subjects.py`): **raw**, the floor: same schema and pragmas as the sqlite",
        "backend, hand-written SQL, `BEGIN IMMEDIATE`, tuples instead of models; **sqlite**, **json**,",
        "**dual** (json primary, sqlite secondary): ccr-registry through `open_store`; **diskcache**",
        "(`Cache`, index entries for the two queries kept in the same transaction); **sqlitedict** (autocommit,",
        "same index entries, a `filelock` around each read-modify-write); **tinydb** (opened afresh under a",
        "`filelock` for every operation: it caches table state in the process); **legacy** (the old daemon's",
        "way plus a cross-process lock: the whole file parsed for every operation and rewritten in place).",
        "",
        "Each single-process figure is the median of up to 2,000 operations or one second of them (at least",
        "3), after one warm-up operation, on a store already holding that many sessions (10 of them with",
        "`notify`, one token per 10 sessions).",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {value} | {met} |" for name, value, met, _ in target_rows(results)]
    lines += ["", "## Single process, median latency", ""]
    for size in sizes:
        lines += [f"### {size:,} sessions", ""]
        header = "| op | " + " | ".join(names) + " | sqlite / raw | sqlite / diskcache |"
        lines += [header, "| --- " * (len(names) + 3) + "|"]
        for op in OPS:
            cells = [fmt(med(results, n, size, op)) for n in names]
            ours = med(results, "sqlite", size, op)
            vs_raw = ratio(ours, med(results, "raw", size, op)) if "raw" in names else "n/a"
            vs_dc = (
                ratio(ours, med(results, "diskcache", size, op)) if "diskcache" in names else "n/a"
            )
            lines.append(f"| {op} | " + " | ".join(cells) + f" | {vs_raw} | {vs_dc} |")
        lines.append("")
    lines += [
        f"![latency against store size](img/{images[0]})",
        "",
        "## Contention: processes writing at once",
        "",
        "Each process registers 50 new sessions, then does 20 read-modify-write increments of one",
        "shared counter (each as one unit: `atomic()` for ours, the subject's transaction or lock for",
        "the others), on a store of 1,000 sessions. Throughput counts every operation of every process",
        "over the wall time from the first start to the last end. Lost updates: increments or registers",
        "missing at the end.",
        "",
        "| subject | processes | ops/s | p50 | p99 | lost increments | lost registers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_procs in results["contention"].items():
        for procs in sorted(by_procs, key=int):
            c = by_procs[procs]
            lines.append(
                f"| {name} | {procs} | {c['throughput']:,.0f} | {c['p50_ms']:.2f} ms | "
                f"{c['p99_ms']:.1f} ms | {c['lost_increments']} | {c['lost_registers']} |"
            )
    lines += [
        "",
        f"![throughput against processes](img/{images[1]})",
        "",
        "## Hook burst",
        "",
        "N fresh `ccr-registry hook session-start` processes released at once on a store of 1,000",
        "sessions, against N bare interpreters doing nothing but reading their stdin; wall time of the",
        "whole burst, median of 5 bursts. See also [hooks.md](hooks.md) for one process at a time.",
        "",
        "| processes | bare python | hook | hook / bare | sessions landed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for procs, b in sorted(results["hook_burst"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {procs} | {b['bare']:.0f} ms | {b['hook']:.0f} ms | {b['hook'] / b['bare']:.2f}x | "
            f"{int(b['landed'])} of {procs} |"
        )
    lines += ["", "## Reading the numbers", "", "See [benchmark-notes.md](benchmark-notes.md).", ""]
    out.write_text("\n".join(lines))
