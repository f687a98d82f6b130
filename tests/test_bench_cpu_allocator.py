"""bench/cpu_allocator.py: a dream env's step in fresh processes, malloc's defaults against freed memory kept."""

from __future__ import annotations

import pytest
from scripts import ROOT, load_script

from dws_gym.cpu_allocator import _glibc_version

DEFAULT = str(ROOT / "dws_gym" / "assets" / "simulators" / "breakout")


@pytest.mark.skipif(_glibc_version() is None, reason="the settings are glibc malloc's")
def test_both_settings_are_timed_in_fresh_processes_and_written(tmp_path):
    bench = load_script("bench/cpu_allocator.py", "bench_cpu_allocator")
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    args = bench.Args(simulator=DEFAULT, num_envs=2, threads=1, dtype="fp32", compile=False, rounds=1, steps=2,
                      warmup=1, write_results=True, results_file=str(results))
    text = bench.main(args)
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["malloc left as it is (DWS_GYM_MALLOC=default)",
                                    bench.run_child(args, "kept")["allocator"]]
    assert rows[1][0].startswith("malloc keeps freed memory")
    assert rows[0][6] == "1.00×" and all(float(r[1]) > 0 and float(r[4].replace(",", "")) >= 0 for r in rows)
    written = results.read_text()
    assert "## Dream step: malloc's defaults against freed memory kept" in written and text in written
