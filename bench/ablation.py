"""DWS ablation on one dataset and one budget: action conditioning (frame / global / none) and motion loss (c).

Runs ``train_world_model.py`` once per variant on the same trajectory store, with the same seed, steps and batch,
then collects each run's held-out table into one comparison (the mean row of each metric, and the acceptance checks)
and, with --write-results, appends it to bench/RESULTS.md — whatever it shows.

    python bench/ablation.py --data data/breakout --total-steps 2000 --write-results
    python bench/ablation.py --data data/breakout --total-steps 200 --extra="--batch-size 4"    # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "frame, c=default": ["--action-conditioning", "frame"],
    "global, c=default": ["--action-conditioning", "global"],
    "none, c=default": ["--action-conditioning", "none"],
    "frame, c=1 (plain loss)": ["--action-conditioning", "frame", "--motion-c", "1"],
}
COLUMNS = ["psnr model", "psnr copy", "moving_mse model", "moving_mse copy", "moving_mse shuffled", "action_sensitivity"]


def mean_row(metrics: dict) -> dict:
    rows = metrics.get("table", {}).get("rows", [])
    for row in rows:
        if row.get("h") == "mean":
            return row
    return {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="trajectory store shared by every variant")
    p.add_argument("--env-id", default="ALE/Breakout-v5")
    p.add_argument("--total-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of: " + "; ".join(VARIANTS))
    p.add_argument("--extra", default="", help="more train_world_model.py flags, one string")
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--results-file", default=str(Path(__file__).with_name("RESULTS.md")))
    args = p.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")

    results = {}
    for name in args.variants:
        out = Path(args.out) / name.replace(" ", "").replace(",", "_").replace("(", "").replace(")", "")
        cmd = [sys.executable, str(ROOT / "train_world_model.py"), "--env-id", args.env_id, "--data", args.data,
               "--total-steps", str(args.total_steps), "--seed", str(args.seed), "--output-dir", str(out),
               "--no-capture-video", "--no-progress", *VARIANTS[name], *shlex.split(args.extra)]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        config = json.loads((out / "simulator" / "simulator_config.json").read_text())
        results[name] = config["metrics"]

    header = "| variant | " + " | ".join(COLUMNS) + " | acceptance |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics in results.items():
        row = mean_row(metrics)
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), (int, float)) else "n/a" for c in COLUMNS]
        acc = metrics.get("acceptance") or {}
        verdict = "pass" if acc.get("all") else ("fail" if acc else "n/a (horizon < 15)")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    table = "\n".join(lines)
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.results_file, "a") as f:
            f.write(f"\n## DWS ablation ({date})\n\nCommand: `python {' '.join(sys.argv)}`  \nSame data, seed and "
                    f"budget ({args.total_steps} steps) per variant; mean over horizons 1..15 of the held-out table.\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
