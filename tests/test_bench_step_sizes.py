"""bench/step_sizes.py: Simulator.step rows of a saved simulator and fresh narrower variants, in one process."""

from __future__ import annotations

import pytest
from scripts import ROOT, load_script

DEFAULT = str(ROOT / "dws_gym" / "assets" / "simulators" / "breakout")


def test_rows_of_a_saved_simulator_and_fresh_variants_are_timed_and_written(tmp_path):
    bench = load_script("bench/step_sizes.py", "bench_step_sizes")
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    args = bench.Args(simulator=(DEFAULT,), sizes=("8,16,16:1", "16,32,64", "16,32,64:2:c4", "16,32,64:2:m1",
                                                           "16,32,64:2:p8", "16,32,64:2"),
                      num_envs=2, threads=1, ale_threads=1, dtype="fp32", compile="off", rounds=2, steps_per_round=1,
                      warmup=1, real_steps=5, write_results=True, results_file=str(results))
    text = bench.main(args)
    rows = [line.split("|")[1:-1] for line in text.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == [f"`{DEFAULT}`", "fresh: widths 8/16/16, head depth 1",
                                            "fresh: widths 16/32/64, head depth 1",  # the shipped head's
                                            "fresh: widths 16/32/64, 4x4 cells, head depth 2",
                                            "fresh: widths 16/32/64, head depth 2 reading 1 of 4 frames",
                                            "fresh: widths 16/32/64, head depth 2, 8 px patches",
                                            "fresh: widths 16/32/64, head depth 2"]
    flops = [float(r[1].strip().removesuffix(" M")) for r in rows]
    assert flops[1] < flops[2] < flops[0]  # narrower networks count fewer FLOPs
    # and so do 4x4 cells, a head that reads one frame and a head on the shipped 16 x 16-pixel patches, not 8 x 8
    assert flops[3] < flops[6] and flops[4] < flops[6] and flops[6] < flops[5]
    assert rows[0][6].strip() == "1.00×" and all(float(r[2]) > 0 and float(r[7]) > 0 for r in rows)
    written = results.read_text()
    assert "## Dream step by network size: Simulator.step in one process" in written and text in written


@pytest.mark.parametrize("text", ["16,32", "16,32,64:0", "a,b,c", "16,32,-1", "16,32,64:1:2", "16,32,64:cx",
                                  "16,32,64:p0"])
def test_a_malformed_size_is_refused_with_an_example(text):
    bench = load_script("bench/step_sizes.py", "bench_step_sizes")
    with pytest.raises(SystemExit, match="16,32,64:1"):
        bench.parse_size(text)


def test_sizes_name_cells_and_the_head_s_memory():
    bench = load_script("bench/step_sizes.py", "bench_step_sizes")
    assert bench.parse_size("24,48,64:1:c4:m1") == bench.Size((24, 48, 64), 1, 4, 1)
    assert bench.parse_size("24,48,64:m2") == bench.Size((24, 48, 64), None, None, 2)
    assert bench.parse_size("24,48,64:p16:1") == bench.Size((24, 48, 64), 1, None, None, 16)
    with pytest.raises(SystemExit, match="cell must be 2 or 4"):
        bench.fresh_variant(bench.Simulator.from_pretrained(DEFAULT), bench.parse_size("16,32,64:c3"))
