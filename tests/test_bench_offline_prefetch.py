"""bench/offline_prefetch.py: the offline learner's steps/s with and without minibatches read ahead, as a table."""

from __future__ import annotations

import re

from scripts import load_script
from tiny_sim import make_breakout_store


def test_rounds_alternate_and_the_table_is_written(tmp_path):
    bench = load_script("bench/offline_prefetch.py", "bench_offline_prefetch")
    make_breakout_store(tmp_path / "store")
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    args = bench.Args(dataset=str(tmp_path / "store"), steps=2, rounds=1, batch_size=4, arch="nature",
                      write_results=True, results_file=str(results))
    text = bench.main(args)
    rows = [line for line in text.splitlines() if re.match(r"\| [02] \|", line)]
    assert len(rows) == 2 and rows[0].endswith("| 1.00× |")
    written = results.read_text()
    assert "## Offline learner: minibatches read ahead" in written and text in written
    assert "Command: `python bench/offline_prefetch.py" in written
