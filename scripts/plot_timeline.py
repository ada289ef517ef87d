#!/usr/bin/env python3
"""Draws the README's plot from a run of `cargo bench --bench timeline`.

    python3 scripts/plot_timeline.py IN_DIR OUT.png

IN_DIR holds timeline.csv (balancer,t_ms,backend,calls) and events.csv (t_ms,event). One
panel per balancer: calls answered per backend per 100 ms, and failed calls in red; the
faults are marked with vertical lines. Needs matplotlib (Debian: python3-matplotlib).
"""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BUCKET_MS = 100
BALANCERS = ["tonic-etcd", "tonic balance_channel"]
TITLES = {
    "tonic-etcd": "tonic-etcd's balancer (EtcdDiscover::channel)",
    "tonic balance_channel": "tonic's Channel::balance_channel, fed by EtcdDiscover",
}


def read(in_dir):
    series = defaultdict(lambda: defaultdict(dict))
    with open(f"{in_dir}/timeline.csv") as f:
        for row in csv.DictReader(f):
            series[row["balancer"]][row["backend"]][int(row["t_ms"])] = int(row["calls"])
    with open(f"{in_dir}/events.csv") as f:
        events = [(int(row["t_ms"]), row["event"]) for row in csv.DictReader(f)]
    return series, events


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    in_dir, out = sys.argv[1], sys.argv[2]
    series, events = read(in_dir)
    end = max(t for t, _ in events)
    ticks = list(range(0, end, BUCKET_MS))
    seconds = [t / 1000 for t in ticks]
    backends = sorted({b for s in series.values() for b in s if b != "failed"})
    colours = dict(zip(backends, ["tab:blue", "tab:green", "tab:orange", "tab:purple"]))
    top = max(n for s in series.values() for b in s.values() for n in b.values())
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, sharey=True)
    for ax, name in zip(axes, BALANCERS):
        per_backend = series.get(name, {})
        failed_total = sum(per_backend.get("failed", {}).values())
        for backend in backends:
            counts = per_backend.get(backend, {})
            ax.plot(seconds, [counts.get(t, 0) for t in ticks], lw=1.1,
                    color=colours[backend], label=backend)
        failed = per_backend.get("failed", {})
        ax.fill_between(seconds, [failed.get(t, 0) for t in ticks], step="mid",
                        color="tab:red", alpha=0.6, label=f"failed ({failed_total} in all)")
        for t, what in events:
            if what.startswith(("SIGTERM", "kill -9")):
                ax.axvline(t / 1000, color="grey" if what.startswith("SIGTERM") else "black",
                           ls="--", lw=0.8)
        ax.set_title(TITLES.get(name, name), fontsize=10, loc="left")
        ax.set_ylabel("calls / 100 ms")
        ax.set_ylim(0, top * 1.3)
        ax.legend(loc="upper right", fontsize=8, ncol=4)
        ax.grid(alpha=0.3)
    for t, what in events:
        if what.startswith(("SIGTERM", "kill -9")):
            label = "SIGTERM" if what.startswith("SIGTERM") else "kill -9"
            axes[0].annotate(label, (t / 1000, 1.0), xycoords=("data", "axes fraction"),
                             fontsize=7, rotation=90, va="top", ha="right")
    axes[-1].set_xlabel("seconds (rolling restart: SIGTERM, one server at a time; then kill -9 "
                        "of one server, whose key stays until its 10 s lease expires)")
    fig.suptitle("Calls per backend per 100 ms, 800 calls/s per balancer, 3 greeter_server "
                 "processes", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
