"""Draws the headline chart from the harness's last comparison: W1 drain rate per system.

usage: chart.py RESULTS_DIR OUT.png   (reads the newest Redis comparison, *-qtasks-yours*.jsonl, in RESULTS_DIR)
"""
import json
import statistics
import sys
from pathlib import Path

results, out = Path(sys.argv[1]), Path(sys.argv[2])
newest = max(results.glob("*-qtasks-yours*.jsonl"), key=lambda p: p.stat().st_mtime)
rates = {}
for line in newest.read_text().splitlines():
    row = json.loads(line)
    if row.get("workload") == "w1" and row.get("drain_rate"):
        rates.setdefault(row.get("peer") or row.get("system"), []).append(row["drain_rate"])
names = {"qtasks": "Python QTasks 1.7.3", "yours": "qtasks (Rust)", "apalis": "apalis 1.0", "apalis-7k": "apalis 1.0 (7k backlog)"}
labels = [names.get(k, k) for k in rates]
medians = [statistics.median(v) for v in rates.values()]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
bars = ax.barh(labels, medians, color=["#9aa", "#e63", "#69c"][: len(labels)])
ax.set_title("W1: drain 20,000 queued no-op tasks with one worker (Redis, 2 cores)", fontsize=10)
ax.set_xlabel("tasks/s, median of 3 alternated rounds (apalis: 7,000 tasks)")
for bar, value in zip(bars, medians):
    ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center")
ax.set_xlim(0, max(medians) * 1.25)
fig.tight_layout()
fig.savefig(out)
print(f"chart written to {out} from {newest.name}")
