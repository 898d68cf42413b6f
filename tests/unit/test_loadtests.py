"""The benchmark's pure parts: statistics, tables, ratios, the Poisson schedule, the generated
inputs, the offline batch planner, the /metrics deltas and the load generators' output parsers.
No server, no model, no timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.synthetic import vocab_path
from loadtests import data
from loadtests.clients import perf_analyzer, wrk
from loadtests.offline import padding_ratio, plan_batches
from loadtests.promscrape import BatchStats, parse, value
from loadtests.report import render, targets
from loadtests.schedule import poisson_arrivals, rate_ladder
from loadtests.stats import LatencySummary, fmt, markdown_table, median, percentile, ratio


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The BERT-uncased WordPiece tokenizer over the real ELECTRA vocab (what the demo models use)."""
    return data.bert_tokenizer(vocab_path())


# -- statistics -----------------------------------------------------------------------------------


def test_percentile_matches_numpy_linear_interpolation() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 100, 1001):
        values = list(rng.exponential(size=n))
        for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order of the input does not matter
    assert median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = LatencySummary.of([0.01 * i for i in range(1, 101)])
    assert summary.count == 100
    assert summary.mean_s == pytest.approx(0.505)
    assert summary.p50_s == pytest.approx(0.505)
    assert summary.p90_s == pytest.approx(0.901)
    assert summary.p99_s == pytest.approx(0.9901)
    assert summary.max_s == pytest.approx(1.0)
    empty = LatencySummary.of([])
    assert empty.count == 0 and math.isnan(empty.p99_s)


def test_ratio_handles_missing_values() -> None:
    assert ratio(85.0, 100.0) == pytest.approx(0.85)
    assert ratio(None, 100.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 2.0) is None


def test_markdown_table_aligns_numbers_right_and_text_left() -> None:
    table = markdown_table(["name", "seq/s", "ratio"], [["rest", 1234.5, "0.91x"], ["grpc", 99.0, "-"]])
    lines = table.splitlines()
    assert lines[0] == "| name |   seq/s | ratio |"
    assert lines[1] == "|------|--------:|------:|"
    assert lines[2] == "| rest | 1,234.5 | 0.91x |"
    assert lines[3] == "| grpc |    99.0 |     - |"
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [["only one"]])


def test_fmt() -> None:
    assert fmt(None) == "-"
    assert fmt(math.nan) == "-"
    assert fmt(12345) == "12,345"
    assert fmt(0.12345, 3) == "0.123"
    assert fmt("text") == "text"


# -- Poisson schedule -----------------------------------------------------------------------------


def test_poisson_schedule_is_deterministic_and_bounded() -> None:
    a = poisson_arrivals(50.0, 20.0, seed=7)
    b = poisson_arrivals(50.0, 20.0, seed=7)
    c = poisson_arrivals(50.0, 20.0, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:20], c[:20])
    assert np.all(np.diff(a) > 0)
    assert a[0] >= 0 and a[-1] < 20.0


def test_poisson_schedule_has_the_right_rate_and_exponential_gaps() -> None:
    times = poisson_arrivals(200.0, 100.0, seed=1)
    # 20,000 expected arrivals: the count is within a few standard deviations (sqrt(20000) ~ 141)
    assert abs(len(times) - 20000) < 600
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03)
    # exponential: standard deviation equals the mean, and P(gap > mean) = e^-1
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)
    assert float(np.mean(gaps > gaps.mean())) == pytest.approx(math.exp(-1), abs=0.02)


def test_poisson_schedule_tops_up_when_the_first_draw_falls_short() -> None:
    times = poisson_arrivals(0.5, 400.0, seed=2)  # few events: the slack is relatively small
    assert times[-1] < 400.0 and len(times) > 120
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 1.0)


def test_rate_ladder() -> None:
    assert rate_ladder(80.0, [0.5, 0.85, 1.0]) == [40.0, 68.0, 80.0]
    assert rate_ladder(0.2, [0.5]) == [0.5]  # never below half a request per second


# -- generated inputs -----------------------------------------------------------------------------


def test_target_lengths_are_deterministic_within_bounds_and_skewed() -> None:
    lengths = data.target_lengths(5000, seed=11)
    assert lengths == data.target_lengths(5000, seed=11)
    assert min(lengths) >= 8 and max(lengths) <= 128
    assert 25 <= median(lengths) <= 40  # log-normal around 32
    assert sum(1 for n in lengths if n <= 16) > sum(1 for n in lengths if n >= 100)  # short ones dominate


def test_mixed_texts_have_exact_token_counts_and_are_deterministic(tokenizer: Tokenizer) -> None:
    texts = data.mixed_texts(tokenizer, 200, seed=5)
    assert texts == data.mixed_texts(tokenizer, 200, seed=5)
    assert texts[:50] == data.mixed_texts(tokenizer, 50, seed=5)  # a prefix of a bigger set
    assert texts != data.mixed_texts(tokenizer, 200, seed=6)
    assert data.token_lengths(tokenizer, texts) == data.target_lengths(200, seed=5)
    assert len(set(texts)) == len(texts)
    assert all(t == t.strip() and "  " not in t for t in texts)


def test_fixed_texts(tokenizer: Tokenizer) -> None:
    texts = data.fixed_texts(tokenizer, 20, 128)
    assert data.token_lengths(tokenizer, texts) == [128] * 20


def test_qa_pairs_have_long_contexts(tokenizer: Tokenizer) -> None:
    pairs = data.qa_pairs(tokenizer, 12, seed=4)
    assert pairs == data.qa_pairs(tokenizer, 12, seed=4)
    context_tokens = data.token_lengths(tokenizer, [p.context for p in pairs])
    assert all(300 <= n <= 1500 for n in context_tokens)
    assert max(context_tokens) > 512  # some need several windows
    assert all(p.question.endswith("?") for p in pairs)


# -- offline batch planning -----------------------------------------------------------------------


def test_plan_batches_fifo_and_sorted_cover_every_row_once() -> None:
    lengths = [5, 60, 7, 58, 6, 61, 8, 59]
    for order in ("fifo", "sorted"):
        batches = plan_batches(lengths, 4, order)
        assert sorted(i for b in batches for i in b) == list(range(8))
        assert all(len(b) <= 4 for b in batches)
    assert plan_batches(lengths, 4, "fifo") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_batches(lengths, 4, "sorted") == [[0, 4, 2, 6], [3, 7, 1, 5]]
    with pytest.raises(ValueError):
        plan_batches(lengths, 4, "random")


def test_plan_batches_respects_the_token_budget() -> None:
    lengths = [100, 100, 100, 300, 10]
    batches = plan_batches(lengths, 8, "fifo", max_tokens=300)
    assert batches == [[0, 1, 2], [3], [4]]
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 300 or len(b) == 1


def test_padding_ratio_is_the_mean_over_batches() -> None:
    lengths = [2, 4, 4, 4]
    # batch [2, 4]: 8 padded, 6 real -> 0.25; batch [4, 4]: 0
    assert padding_ratio(lengths, [[0, 1], [2, 3]]) == pytest.approx(0.125)
    assert padding_ratio(lengths, []) == 0.0


# -- /metrics deltas ------------------------------------------------------------------------------

EXPOSITION = """# HELP electra_batch_size Rows in each model run
# TYPE electra_batch_size histogram
electra_batch_size_bucket{{le="1.0",model="m"}} 0.0
electra_batch_size_bucket{{le="+Inf",model="m"}} {count}
electra_batch_size_count{{model="m"}} {count}
electra_batch_size_sum{{model="m"}} {rows}
electra_batch_size_count{{model="other"}} 50.0
electra_batch_size_sum{{model="other"}} 500.0
# HELP electra_padding_ratio Padding
# TYPE electra_padding_ratio histogram
electra_padding_ratio_count{{model="m"}} {count}
electra_padding_ratio_sum{{model="m"}} {padding}
# HELP electra_dropped_total Dropped
# TYPE electra_dropped_total counter
electra_dropped_total{{model="m",reason="deadline"}} {dropped}
electra_dropped_total{{model="m",reason="cancelled"}} 1.0
"""


def test_batch_stats_between_two_scrapes() -> None:
    before = parse(EXPOSITION.format(count=10.0, rows=30.0, padding=1.0, dropped=0.0))
    after = parse(EXPOSITION.format(count=30.0, rows=110.0, padding=3.0, dropped=2.0))
    stats = BatchStats.between(before, after, "m")
    assert stats.batches == 20 and stats.rows == 80
    assert stats.mean_batch_size == pytest.approx(4.0)
    assert stats.mean_padding_ratio == pytest.approx(0.1)
    assert stats.dropped == pytest.approx(2.0)
    assert value(after, "electra_dropped_total", model="m") == pytest.approx(3.0)  # summed over reasons
    idle = BatchStats.between(after, after, "m")
    assert idle.mean_batch_size is None and idle.batches == 0


# -- load generator output parsers ----------------------------------------------------------------


def test_wrk_output_is_parsed_from_the_script_line() -> None:
    out = (
        "Running 4s test @ http://127.0.0.1:1/v1/classify\n"
        'WRK_JSON {"requests":120,"duration_us":4000000,"bytes":1,"errors_connect":0,"errors_read":0,'
        '"errors_write":0,"errors_status":2,"errors_timeout":0,"p50_us":10,"p90_us":20,"p99_us":30,'
        '"mean_us":12.5,"max_us":40}\n'
    )
    report = wrk.parse_output(out)
    assert report["requests"] == 120 and report["p99_us"] == 30 and report["errors_status"] == 2
    with pytest.raises(RuntimeError, match="WRK_JSON"):
        wrk.parse_output("no summary here")


def test_perf_analyzer_csv_and_input_data() -> None:
    out = (
        "*** Measurement Settings ***\n  Request count: 240\n  Avg latency: 51163 usec (standard deviation 1)\n"
        "Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p99 latency\n"
        "8,155.5,4,50996,73367,108523\n"
    )
    row = perf_analyzer.parse_csv(out)
    assert row["Inferences/Second"] == "155.5" and row["p99 latency"] == "108523"
    data_ = perf_analyzer.input_data(
        [{"inputs": "a b"}, {"inputs": ["c"]}, {"inputs": {"text": "d", "text_pair": "e"}}], "classify"
    )
    assert data_ == {"data": [{"TEXT": ["a b"]}, {"TEXT": ["c"]}, {"TEXT": ["d"], "TEXT_PAIR": ["e"]}]}
    qa = perf_analyzer.input_data([{"inputs": {"question": "q?", "context": "c."}}], "qa")
    assert qa == {"data": [{"QUESTION": ["q?"], "CONTEXT": ["c."]}]}


# -- the report -----------------------------------------------------------------------------------


def _results(**summary: object) -> dict:
    base = {
        "served_over_ceiling": 0.9,
        "served_over_ceiling_of_medians": 0.88,
        "grpc_over_rest": 1.1,
        "p99_half_saturation_s": 0.04,
        "p99_bound_s": 0.08,
        "p99_bound_mean_s": 0.03,
        "padding_ratio_32": 0.07,
        "ours_over_naive": 3.0,
        "server_rss_mb": 390.0,
        "models_loaded": 4,
    }
    base.update(summary)
    meta = {
        "quick": True,
        "command": "loadtests/bench --quick",
        "started": "now",
        "host": "test",
        "device": "cpu",
        "model": "m",
        "precision": "fp32",
        "shape": "demo",
        "dataset": "mixed",
        "server_args": "",
        "pinning": "none",
        "clients": "wrk",
    }
    return {"meta": meta, "summary": base, "offline": {"sweep": []}, "closed": [], "open": []}


def test_targets_table_says_which_targets_hold() -> None:
    rows = {r[0]: r for r in targets(_results())}
    assert rows["served REST @32 ÷ offline ceiling (model only; median of the rounds' ratios)"][3] == "yes"
    assert rows["padding ratio (REST @32)"][3] == "yes"
    assert rows["ours fp32 @32 ÷ naive fp32 (one run each)"][3] == "-"  # information, not a goal
    versus = {r[0]: r for r in targets(_results(versus_rounds=3, int8_over_naive=5.5, int8_top1_agreement=0.99))}
    assert versus["ours fp32 @32 ÷ naive fp32 (median of 3 side-by-side rounds)"][1:] == ["3.00x", "(info)", "-"]
    int8_row = "ours int8 @32 ÷ naive fp32 (int8 on request; top-1 agreement 99.0% at export)"
    assert versus[int8_row][1:] == ["5.50x", ">= 5x", "yes"]
    assert rows["server RSS (4 models)"][3] == "yes"
    assert rows["p99 at half saturation"][3] == "yes"
    assert rows["p99 at half saturation (stricter reading)"][3] == "NO"
    missing = {r[0]: r for r in targets(_results(served_over_ceiling=None))}
    assert missing["served REST @32 ÷ offline ceiling (model only; median of the rounds' ratios)"][3] == "-"


def test_render_produces_markdown_with_the_targets() -> None:
    text = render(_results())
    assert text.startswith("# electra-serve benchmark (quick run)")
    assert "## Targets" in text and "0.90x" in text


def test_report_shows_the_stream_next_to_the_unary_grpc() -> None:
    results = _results(
        grpc_over_rest=0.99, grpc_stream_over_rest=1.04, grpc_stream_over_rest_cpu=1.06, v2_grpc_over_http=1.07
    )
    results["offline"] = {"sweep": [], "best": {"label": "b1"}}
    results["rounds"] = [
        {"offline": 100.0, "offline_tok": 90.0, "served": 80.0, "grpc": 79.0, "grpc_stream": 83.0 + i} for i in range(3)
    ]
    rows = {r[0]: r for r in targets(results)}
    assert rows["gRPC ÷ REST @32 (median of the rounds' ratios)"][1:] == ["0.99x", "(info: clients differ)", "-"]
    assert rows["gRPC stream ÷ REST @32 (median of rounds)"][1] == "1.04x"
    assert rows["gRPC stream ÷ REST @32 (median of rounds)"][3] == "-"  # information, not a target
    # The transports compared with one compiled client on both.
    assert rows["KServe v2 gRPC ÷ v2 HTTP @32 (the same C++ client, perf_analyzer)"][1:] == ["1.07x", ">= 1.0x", "yes"]
    text = render(results)
    header = next(line for line in text.splitlines() if line.startswith("| round"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells.index("gRPC stream @32 seq/s") == cells.index("gRPC seq/CPU-s") + 1
    median_row = next(line for line in text.splitlines() if line.startswith("| median"))
    assert "84" in median_row  # the median of 83, 84, 85


def test_render_shows_the_side_by_side_naive_rounds() -> None:
    def load(seqs: float) -> dict:
        return {
            "protocol": "naive",
            "client": "wrk",
            "mode": "closed",
            "concurrency": 1,
            "seqs_per_s": seqs,
            "errors": 0,
            "latency": {"p50_s": 0.01, "p90_s": 0.02, "p99_s": 0.03},
        }

    results = _results(versus_rounds=1, ours_over_naive=2.5)
    results["naive"] = [load(60.0)]
    results["versus"] = [
        {
            "round": 1,
            "naive": {"1": load(60.0), "32": load(40.0)},
            "ours": load(150.0),
            "int8": load(330.0),
            "ours_over_naive": 2.5,
            "int8_over_naive": 5.5,
        }
    ]
    text = render(results)
    assert "| round | naive @1 seq/s | naive @32 seq/s | ours @32 seq/s | ours ÷ naive |" in text
    assert "2.50x" in text and "5.50x" in text and "330.0" in text


def test_lua_script_exists_next_to_the_driver() -> None:
    assert Path(wrk.SCRIPT).is_file()
    assert "WRK_JSON" in Path(wrk.SCRIPT).read_text()
