"""bench/offline_prefetch.py: the offline learner's steps/s by --prefetch and --dtype, as a table."""

from __future__ import annotations

import re

from scripts import load_script
from tiny_sim import make_breakout_store


def test_a_run_is_timed_and_the_table_is_written(tmp_path):
    bench = load_script("bench/offline_prefetch.py", "bench_offline_prefetch")
    make_breakout_store(tmp_path / "store")
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    args = bench.Args(dataset=str(tmp_path / "store"), prefetch=(2,), dtype=("fp32", "bf16"), steps=2, rounds=1,
                      batch_size=4, arch="nature", write_results=True, results_file=str(results))
    text = bench.main(args)  # two real runs of offline/cql.py (each costs a process start): the table and ratios
    rows = [line for line in text.splitlines() if re.match(r"\| 2 \|", line)]
    assert [row.split("|")[2].strip() for row in rows] == ["fp32", "bf16"]
    assert rows[0].endswith("| 1.00× |") and all(float(row.split("|")[4]) > 0 for row in rows)
    written = results.read_text()
    assert "## Offline learner: gradient steps/s by --prefetch and --dtype" in written and text in written
    assert "Command: `python bench/offline_prefetch.py" in written
