"""Smoke test of bench/dream_env.py: tiny sweeps run in-process and report positive, consistent figures."""

import math
import re
import sys

import pytest
from scripts import load_script

from dws_gym.hardware import cpu_model, resolve_precision

@pytest.fixture(scope="module")
def bench():
    yield load_script("bench/dream_env.py", "bench_dream_env")
    sys.modules.pop("bench_dream_env", None)


FAST = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--threads", "1", "--ale-threads", "1",
        "--real-min-seconds", "0.05"]


def table_rows(text):
    return [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")][1:]


def test_tiny_sweep_reports_fp32_and_auto_rows_next_to_the_real_env(bench, capsys):
    rows = bench.main([*FAST, "--num-envs", "1", "2"])  # default --dtype fp32 auto
    auto = resolve_precision("auto", "cpu").name
    assert [(r.num_envs, r.precision, r.requested) for r in rows] == [
        (1, "fp32", "fp32"), (1, auto, "auto"), (2, "fp32", "fp32"), (2, auto, "auto")]
    for r in rows:
        assert r.note == "" and r.steps >= 2 and not r.compiled
        assert r.dream_tps > 0 and r.real_tps > 0 and r.peak_memory >= 0
        assert math.isclose(r.dream_tps, r.num_envs / r.seconds_per_step, rel_tol=1e-9)
        assert math.isclose(r.ratio, r.dream_tps / r.real_tps)
        assert 0.0 <= r.simulated <= 1.0
        assert r.flops_per_transition > 0 and math.isnan(r.synthesize_seconds)
    # The real env is timed once per num_envs and shared by its rows; FLOPs per transition do not depend on the
    # precision or (without restarts) on the batch.
    assert rows[0].real_tps == rows[1].real_tps and rows[2].real_tps == rows[3].real_tps
    assert rows[0].flops_per_transition == pytest.approx(rows[3].flops_per_transition, rel=1e-6)
    out = capsys.readouterr()
    cells = table_rows(out.out)
    assert [c[0].strip() for c in cells] == ["1", "1", "2", "2"]
    assert cells[1][1].strip() == f"{auto} (auto)"
    assert cpu_model() in out.err  # which CPU and which bf16 path ran is printed
    assert "weights cast to bfloat16" in out.err or auto == "fp32"


def test_flow_backbone_bf16_autocast_and_synthesize(bench, capsys):
    rows = bench.main([*FAST, "--backbone", "flow", "--num-envs", "2", "--dtype", "bf16", "--bf16-mode", "autocast",
                       "--no-real", "--synthesize", "1000"])
    (row,) = rows
    assert row.precision == "bf16" and row.dream_tps > 0 and row.flops_per_transition > 0
    assert row.synthesize_seconds == pytest.approx(1000 / row.dream_tps)
    out = capsys.readouterr()
    assert "time for 1,000 transitions" in out.out and "Synthesizing 1,000 transitions here" in out.out
    assert "flow (pixel space" in out.err and "torch.autocast" in out.err


def test_compile_both_gives_eager_and_compiled_rows(bench):
    # The eager backend traces with torch.compile without code generation (fast); inductor is what the GPU runs.
    rows = bench.main([*FAST, "--num-envs", "2", "--dtype", "fp32", "--no-real", "--compile", "both",
                       "--compile-backend", "eager"])
    assert [r.compiled for r in rows] == [False, True]
    assert all(r.dream_tps > 0 and r.note == "" for r in rows)
    assert rows[0].flops_per_transition == rows[1].flops_per_transition


def test_write_results_appends_a_section(bench, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier\n")
    bench.main([*FAST, "--num-envs", "1", "--dtype", "auto", "--synthesize", "500", "--peak-tflops", "990",
                "--write-results", "--results-file", str(results), "--note", "a test"])
    text = results.read_text()
    assert text.startswith("# earlier\n") and "## Dream env throughput" in text
    for piece in ("Machine: " + cpu_model(), "Command: `python bench/dream_env.py --tiny", "Precision: --dtype auto",
                  "% of peak against 990 TFLOP/s", "Synthesizing 500 transitions here", "Note: a test"):
        assert piece in text
    (cells,) = table_rows(text)
    assert cells[0].strip() == "1" and len(cells) == 16  # 13 figures + % of peak, time for N, note
    assert cells[12].strip() == "yes"  # the env's rolling head-token cache, on by default


def test_rolling_cache_rows_count_fewer_flops(bench):
    rows = bench.main([*FAST, "--num-envs", "2", "--dtype", "fp32", "--rolling-cache", "both", "--no-real"])
    assert [r.cached for r in rows] == [False, True] and all(r.dream_tps > 0 for r in rows)
    # the cached step embeds one frame for the head instead of K + 1
    assert rows[1].flops_per_transition < rows[0].flops_per_transition


def test_stopping_rule(bench):
    # A limit no step can meet: the sweep stops after its first size and says why.
    rows = bench.main([*FAST, "--num-envs", "1", "2", "--dtype", "bf16", "--no-real", "--max-seconds-per-step", "0"])
    assert len(rows) == 1 and rows[0].note.startswith("stopped")
    assert rows[0].dream_tps > 0 and math.isnan(rows[0].real_tps)


def test_real_env_cap_is_reported(bench):
    rows = bench.main([*FAST, "--num-envs", "2", "--dtype", "fp32", "--real-max-envs", "1"])
    assert rows[0].real_tps > 0 and rows[0].note == "real env timed at 1 envs"


@pytest.mark.parametrize("bad, message", [
    (["--num-envs", "0"], r"--num-envs must be positive integers, got \[0\]"),
    (["--dtype", "fp16"], r"invalid choice 'fp16' for argument '--dtype'"),
    (["--synthesize", "0"], r"--synthesize must be a positive number of transitions, got 0"),
    (["--compile", "maybe"], r"invalid choice 'maybe' for argument '--compile'"),
    (["--steps", "1"], r"--steps must be >= 2"),
])
def test_bad_arguments_are_rejected(bench, bad, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", *bad])
    assert exc.value.code == 2  # a usage error: the message is on stderr
    assert re.search(message, capsys.readouterr().err)
