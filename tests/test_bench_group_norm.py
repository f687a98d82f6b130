"""bench/group_norm.py: compiled torch and dws_gym group norms timed side by side, agreeing, and written."""

from __future__ import annotations

import pytest
from scripts import load_script


def test_a_row_is_timed_checked_and_written(tmp_path):
    bench = load_script("bench/group_norm.py", "bench_group_norm")
    results = tmp_path / "RESULTS.md"
    args = bench.Args(shapes=("16x8",), batch=2, groups=4, threads=1, calls=2, write_results=True,
                      results_file=str(results))
    text = bench.main(args)
    row = text.splitlines()[2].split("|")[1:-1]
    assert row[0].strip() == "16 x 8" and all(float(v) > 0 for v in row[1:4])
    assert float(row[5]) < 0.1  # the two compiled forms agree to bf16 rounding
    assert "## Group norm + SiLU, compiled" in results.read_text() and text in results.read_text()


@pytest.mark.parametrize("shape, message", [("16", "CHANNELSxSIDE"), ("10x8", "do not split into 4 groups")])
def test_a_bad_shape_is_refused(shape, message):
    bench = load_script("bench/group_norm.py", "bench_group_norm")
    with pytest.raises(SystemExit, match=message):
        bench.main(bench.Args(shapes=(shape,), groups=4))
