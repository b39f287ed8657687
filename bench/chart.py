"""The chart of every operation: ``bench/results/overhead.png`` (matplotlib).

Drawn by ``bench/report.py`` from its operations table: one bar per
implementation (compiled, pure-Python twin, peer), ns per call on a log scale.
"""

from __future__ import annotations

from typing import Any

from report import CHART, fmt_ns


def chart(ops: list[dict[str, Any]], f_ns: float, stat: str, machine: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"compiled": "#1f77b4", "twin": "#ff7f0e", "peer": "#7f7f7f"}
    floor = 0.5
    bars: list[tuple[str, float, str, bool]] = []   # (label, value, role, clipped)
    groups: list[tuple[int, int, str]] = []
    seen = set()
    for o in ops:
        if o["key"].startswith("throughput_"):
            continue
        start = len(bars)
        if o["key"] not in seen:
            seen.add(o["key"])
            for role, value, name in (("compiled", o["compiled_ns"],
                                       "fastpath" if o["key"] == "retry" else "compiled"),
                                      ("twin", o["twin_ns"], "twin")):
                if value is not None:
                    bars.append((name, max(value, floor), role, value < floor))
        if o["peer"] and o["peer_ns"] is not None:
            bars.append((o["peer"], max(o["peer_ns"], floor), "peer", o["peer_ns"] < floor))
        if len(bars) > start:
            if groups and groups[-1][2] == o["operation"]:
                groups[-1] = (groups[-1][0], len(bars), o["operation"])
            else:
                groups.append((start, len(bars), o["operation"]))

    # One y slot per bar, a gap between operations.
    ys: list[float] = []
    y = 0.0
    group_of = {}
    for gi, (start, end, _) in enumerate(groups):
        for i in range(start, end):
            ys.append(y)
            group_of[i] = gi
            y += 1
        y += 0.8
    height = max(6.0, 0.26 * y + 1.6)
    fig, ax = plt.subplots(figsize=(12, height))
    for gi, (start, end, label) in enumerate(groups):
        if gi % 2 == 0:
            ax.axhspan(ys[start] - 0.6, ys[end - 1] + 0.6, color="#f2f2f2", zorder=0)
        ax.text(1.005, (ys[start] + ys[end - 1]) / 2, label, transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=8)
    for i, (_name, value, role, clipped) in enumerate(bars):
        ax.barh(ys[i], value, color=colors[role], height=0.8, zorder=2,
                hatch="//" if clipped else None)
        text = "≤ 0 (below resolution)" if clipped else fmt_ns(value)
        ax.text(value * 1.08, ys[i], text, va="center", fontsize=7, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low = floor / 1.5 if any(b[3] for b in bars) else min(b[1] for b in bars) / 3
    ax.set_xlim(low, max(b[1] for b in bars) * 8)
    ax.axvline(f_ns, color="black", linestyle="--", linewidth=0.8, zorder=1)
    ax.text(f_ns, -1.2, f" f() = {f_ns:.0f} ns", fontsize=8, va="bottom")
    ax.set_xlabel(f"ns per call, log scale ({stat} of pytest-benchmark rounds; "
                  "overhead = minus f() for operations that call f)")
    ax.set_title(f"fastpath: overhead per call — compiled vs pure-Python twin vs peers\n"
                 f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
                 f"clock {machine['fastpath_clock']}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in ("compiled", "twin", "peer")]
    ax.legend(handles, ["fastpath (compiled)", "pure-Python twin", "peer"], loc="lower right",
              fontsize=8)
    ax.grid(axis="x", which="major", linestyle=":", zorder=1)
    fig.subplots_adjust(left=0.15, right=0.72, top=1 - 0.9 / height, bottom=0.6 / height)
    fig.savefig(CHART, dpi=110)
    plt.close(fig)
