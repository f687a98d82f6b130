"""Smoke test of bench/dream_env.py: a tiny sweep runs in-process and reports positive, consistent figures."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dream_env.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dream_env", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


FAST = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--sampling-steps", "1",
        "--flops-num-envs", "1", "--ale-threads", "1", "--real-min-seconds", "0.05"]


def test_tiny_sweep_reports_dream_and_real_rows(bench, capsys):
    rows = bench.main([*FAST, "--num-envs", "1", "2"])
    assert [r.num_envs for r in rows] == [1, 2]
    for r in rows:
        assert r.note == "" and r.steps >= 2
        assert r.dream_tps > 0 and r.real_tps > 0 and r.peak_memory >= 0
        assert math.isclose(r.dream_tps, r.num_envs / r.seconds_per_step, rel_tol=1e-9)
        assert math.isclose(r.ratio, r.dream_tps / r.real_tps)
        assert 0.0 <= r.simulated <= 1.0
    # FLOPs are counted once per run (per transition), the same for every row.
    assert rows[0].flops_per_transition == rows[1].flops_per_transition > 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| num_envs |") and [line.split("|")[1].strip() for line in lines[1:]] == ["1", "2"]


def test_bf16_cast_runs_on_cpu_and_stopping_rule(bench):
    # A limit no step can meet: the sweep stops after its first size and says why.
    rows = bench.main([*FAST, "--num-envs", "1", "2", "--dtype", "bf16", "--no-real",
                       "--max-seconds-per-step", "0"])
    assert len(rows) == 1 and rows[0].note.startswith("stopped")
    assert rows[0].dream_tps > 0 and math.isnan(rows[0].real_tps)


def test_bad_arguments_are_rejected(bench):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--num-envs", "0"])
