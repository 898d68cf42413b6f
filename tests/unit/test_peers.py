"""The bench's peers, the parts that need no install and no network: argument parsing, the peers'
command lines and bodies, the venv marker, the rounds reduced to figures, the report and the plot,
and the process-group stop that keeps a peer's workers from outliving the bench."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from loadtests import procstat
from loadtests.bench import parse_args
from loadtests.peers import (
    OFFLINE_ENV,
    PEERS,
    Batching,
    InfinityPeer,
    LitServePeer,
    PeerFiles,
    PyTritonPeer,
    bodies_lines,
    figures,
    parse_peers,
)
from loadtests.peers import venv as peer_venv
from loadtests.peers.phase import hf_layout
from loadtests.report import plot_peers, render, targets
from loadtests.servers import ServerProcess, free_port

# -- arguments --------------------------------------------------------------------------------------


def test_parse_peers_names_all_and_rejects_unknown() -> None:
    assert parse_peers("all") == ["litserve", "pytriton", "infinity"]
    assert parse_peers("infinity, LitServe,infinity") == ["infinity", "litserve"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer"):
        parse_peers("litserve,torchserve")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_peers(" , ")


def test_bench_takes_peers_and_runs_none_by_default() -> None:
    assert parse_args([]).peers is None
    assert parse_args(["--quick", "--peers", "all"]).peers == list(PEERS)
    assert parse_args(["--peers=pytriton"]).peers == ["pytriton"]
    with pytest.raises(SystemExit):
        parse_args(["--peers", "nope"])


# -- the peers' configuration -------------------------------------------------------------------------


def _ports() -> object:
    numbers = iter(range(9100, 9200))
    return lambda: next(numbers)


def _files(tmp_path: Path) -> PeerFiles:
    return PeerFiles("demo-classify", tmp_path / "repo" / "demo-classify", tmp_path / "hf" / "demo-classify")


def test_litserve_launch_batches_with_one_worker_a_core(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    launch = LitServePeer().launch(python, _files(tmp_path), _ports(), Batching(max_batch_size=8, instances=2))
    command = launch.command
    assert command[0] == str(python) and command[1].endswith("apps/litserve_app.py")
    assert command[command.index("--port") + 1] == str(launch.http_port) == "9100"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--workers") + 1] == "2"
    assert command[command.index("--max-batch-size") + 1] == "8"
    assert command[command.index("--batch-timeout") + 1] == "0.002"
    assert (launch.ready_path, launch.url_path) == ("/health", "/predict")
    assert launch.settings["fast_queue"] is True
    assert launch.env["HF_HUB_OFFLINE"] == "1" and launch.env["PYTHONPATH"] == ""


def test_pytriton_launch_uses_triton_dynamic_batching_and_three_ports(tmp_path: Path) -> None:
    launch = PyTritonPeer().launch(tmp_path / "python", _files(tmp_path), _ports(), Batching(max_delay_ms=2.0))
    command = launch.command
    ports = {command[command.index(f"--{k}-port") + 1] for k in ("http", "grpc", "metrics")}
    assert ports == {"9100", "9101", "9102"} and launch.http_port == 9100
    assert command[command.index("--max-queue-delay-us") + 1] == "2000"
    assert launch.ready_path == "/v2/models/classify/ready"
    assert launch.url_path == "/v2/models/classify/infer"
    assert launch.settings["max_queue_delay_microseconds"] == 2000


def test_infinity_launch_serves_the_hf_layout_with_the_optimum_engine(tmp_path: Path) -> None:
    files = _files(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    launch = InfinityPeer().launch(python, files, _ports(), Batching(max_batch_size=8))
    command = launch.command
    assert command[:2] == [str(tmp_path / "venv" / "bin" / "infinity_emb"), "v2"]
    assert command[command.index("--model-id") + 1] == "." and launch.cwd == files.hf_dir
    assert command[command.index("--served-model-name") + 1] == "demo-classify"
    assert command[command.index("--engine") + 1] == "optimum"
    assert command[command.index("--batch-size") + 1] == "8"
    assert "--no-model-warmup" in command  # its warm-up texts are longer than the model takes
    assert launch.env["INFINITY_ANONYMOUS_USAGE_STATS"] == "0" and launch.env["DO_NOT_TRACK"] == "1"
    assert launch.env["HF_HOME"].startswith(str(tmp_path))
    with pytest.raises(ValueError, match="Hugging Face layout"):
        InfinityPeer().launch(python, PeerFiles("m", tmp_path), _ports(), Batching())


def test_every_peer_is_pinned_and_installs_torch_first_when_it_needs_it() -> None:
    for peer in PEERS.values():
        steps = peer.requirements("1.32.0")
        assert any(a.startswith(peer.package) and a.endswith(f"=={peer.version}") for step in steps for a in step)
        assert any(arg == "onnxruntime==1.32.0" for step in steps for arg in step)
        torch = [i for i, step in enumerate(steps) if any(a.startswith("torch") for a in step)]
        assert torch in ([], [0]) and all(a == "torch==2.13.0" for a in steps[0] if a.startswith("torch"))
    assert OFFLINE_ENV["TRANSFORMERS_OFFLINE"] == "1"


def test_bodies_carry_the_same_texts_in_each_peer_shape() -> None:
    texts = ["I loved it", 'a "quoted" café']
    lit = [json.loads(line) for line in bodies_lines(LitServePeer(), "m", texts).splitlines()]
    assert lit == [{"model": "m", "inputs": t} for t in texts]
    triton = [json.loads(line) for line in bodies_lines(PyTritonPeer(), "m", texts).splitlines()]
    assert triton[1] == {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [texts[1]]}]}
    infinity = [json.loads(line) for line in bodies_lines(InfinityPeer(), "m", texts).splitlines()]
    assert infinity[0] == {"model": "m", "input": ["I loved it"]}
    assert len(bodies_lines(InfinityPeer(), "m", texts).splitlines()) == 2  # one body a line for wrk


def test_answers_are_read_from_each_peer_shape() -> None:
    assert LitServePeer().answer({"label": "POSITIVE", "score": 0.6}) == ("POSITIVE", 0.6)
    triton = {
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [0.75]},
            {"name": "label", "datatype": "BYTES", "shape": [1, 1], "data": ["NEGATIVE"]},
        ]
    }
    assert PyTritonPeer().answer(triton) == ("NEGATIVE", 0.75)
    infinity = {"data": [[{"label": "NEGATIVE", "score": 0.3}, {"label": "POSITIVE", "score": 0.7}]]}
    assert InfinityPeer().answer(infinity) == ("POSITIVE", 0.7)


def test_infinity_log_tells_when_its_graph_optimisation_fell_back() -> None:
    log = "WARNING  infinity_emb WARNING: Optimization failed with OptimizationConfig.__init__() got an ..."
    assert "failed" in InfinityPeer().findings(log)["graph_optimisation"]
    assert InfinityPeer().findings("INFO: Application startup complete.") == {}
    assert LitServePeer().findings(log) == {}


def test_hf_layout_links_the_repository_graph_beside_the_checkpoint_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "demo-classify"
    model_dir.mkdir(parents=True)
    (model_dir / "model.fp32.onnx").write_bytes(b"graph")
    (model_dir / "model.fp32.onnx.data").write_bytes(b"weights")
    variant = {"file": "model.fp32.onnx", "data_file": "model.fp32.onnx.data"}
    (model_dir / "manifest.json").write_text(json.dumps({"variants": {"fp32": variant}}))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "model.safetensors"):
        (checkpoint / name).write_text(name)
    target = tmp_path / "peers" / "models" / "demo-classify"
    for _ in range(2):  # rebuilt from scratch every run
        built = hf_layout(model_dir, checkpoint, target)
        (built / "model_optimized.onnx").write_text("left by infinity")
    assert sorted(p.name for p in built.iterdir()) == [
        "config.json",
        "model.fp32.onnx.data",
        "model.onnx",
        "model_optimized.onnx",
        "tokenizer.json",
        "vocab.txt",
    ]
    assert (built / "model.onnx").read_bytes() == b"graph" and (built / "model.onnx").is_symlink()
    assert (built / "model.fp32.onnx.data").read_bytes() == b"weights"


# -- the venv -----------------------------------------------------------------------------------------


def test_a_venv_counts_as_installed_only_with_the_same_steps(tmp_path: Path) -> None:
    steps = [["litserve==0.2.19", "onnxruntime==1.32.0"]]
    assert not peer_venv.installed(tmp_path, steps)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    (tmp_path / peer_venv.MARKER).write_text(json.dumps(peer_venv.wanted(steps)))
    assert peer_venv.installed(tmp_path, steps)
    assert not peer_venv.installed(tmp_path, [["litserve==0.2.20", "onnxruntime==1.32.0"]])
    (tmp_path / peer_venv.MARKER).write_text("{not json")
    assert not peer_venv.installed(tmp_path, steps)


def test_last_error_keeps_the_telling_lines() -> None:
    output = "\n".join(
        [
            "WARNING: Location 'file:///opt/x/simple/y/' is ignored: it is neither a file nor a directory.",
            "Collecting nvidia-pytriton==9",
            "ERROR: Could not find a version that satisfies the requirement nvidia-pytriton==9",
            "ERROR: No matching distribution found for nvidia-pytriton==9",
        ]
    )
    text = peer_venv.last_error(output)
    assert "WARNING" not in text and text.endswith("No matching distribution found for nvidia-pytriton==9")
    assert len(peer_venv.last_error("x" * 2000, limit=100)) == 103


# -- the figures ----------------------------------------------------------------------------------------


def _run(server: str, round_: int, clients: int, seqs: float, errors: int = 0, cores: float = 1.9) -> dict:
    return {
        "server": server,
        "round": round_,
        "concurrency": clients,
        "seqs_per_s": seqs,
        "errors": errors,
        "latency": {"p50_s": 1 / seqs, "p99_s": 3 / seqs},
        "cpu": {"wall_s": 6.0, "server_cores": cores, "client_cores": 0.01, "other_cores": 0.05},
    }


RUNS = [
    _run("ours", 1, 32, 200.0),
    _run("litserve", 1, 32, 100.0),
    _run("pytriton", 1, 32, 80.0, errors=2),
    _run("ours", 2, 32, 180.0),
    _run("litserve", 2, 32, 60.0),
    _run("pytriton", 2, 32, 90.0),
    _run("ours", 3, 32, 210.0),
    _run("litserve", 3, 32, 70.0),
    _run("pytriton", 3, 32, 70.0),
    _run("ours", 1, 1, 50.0),
    _run("litserve", 1, 1, 25.0),
]


def test_ratios_compare_rounds_side_by_side() -> None:
    assert figures.ours_over(RUNS, "litserve", 32) == pytest.approx(3.0)  # 2.0, 3.0, 3.0
    assert figures.ours_over(RUNS, "pytriton", 1) is None
    best = figures.ours_over_best(RUNS, ["litserve", "pytriton"], 32)
    # round 1: litserve 100 is best (2.0); round 2: pytriton 90 (2.0); round 3: a tie, the first named (3.0)
    assert best["rounds"] == pytest.approx([2.0, 2.0, 3.0])
    assert best["ratio"] == pytest.approx(2.0)
    assert best["best_peer"] == "litserve"
    assert figures.ours_over_best(RUNS, [], 32)["ratio"] is None


def test_per_cpu_second_figures_use_each_server_s_own_cpu() -> None:
    assert figures.per_cpu_s(_run("ours", 1, 32, 100.0, cores=0.5)) == pytest.approx(200.0)
    assert figures.per_cpu_s({"seqs_per_s": 10.0, "cpu": {}}) is None
    runs = [
        _run("ours", 1, 32, 100.0, cores=0.5),  # 200 a CPU-second: fewer cores, more from each
        _run("litserve", 1, 32, 120.0, cores=1.2),  # 100
        _run("pytriton", 1, 32, 60.0, cores=0.4),  # 150: the best per CPU-second, not in throughput
    ]
    assert figures.ours_over_best(runs, ["litserve", "pytriton"], 32)["ratio"] == pytest.approx(100 / 120)
    by_cpu = figures.ours_over_best(runs, ["litserve", "pytriton"], 32, "per_cpu_s")
    assert by_cpu["ratio"] == pytest.approx(200 / 150) and by_cpu["best_peer"] == "pytriton"
    row = figures.table(runs, ["litserve"], [32])[0]
    assert row["per_cpu_s"] == pytest.approx(100.0) and row["ours_over_cpu"] == pytest.approx(2.0)


def test_table_takes_medians_and_the_median_round() -> None:
    rows = figures.table(RUNS, ["ours", "litserve", "pytriton"], [1, 8, 32])
    by = {(r["server"], r["clients"]): r for r in rows}
    assert ("ours", 8) not in by  # not measured: no row
    assert by[("ours", 32)]["seqs_per_s"] == 200.0 and by[("ours", 32)]["ours_over"] is None
    assert by[("pytriton", 32)]["errors"] == 2
    assert by[("pytriton", 32)]["p50_s"] == pytest.approx(1 / 80.0)  # the median round's
    assert by[("litserve", 1)]["ours_over"] == pytest.approx(2.0)
    assert figures.series(rows)["litserve"] == [(1, 25.0), (32, 70.0)]


# -- the report -----------------------------------------------------------------------------------------


def _results_with_peers() -> dict:
    table = figures.table(RUNS, ["ours", "litserve", "pytriton"], [1, 32])
    best = figures.ours_over_best(RUNS, ["litserve", "pytriton"], 32)
    best_cpu = figures.ours_over_best(RUNS, ["litserve", "pytriton"], 32, "per_cpu_s")
    summary = {
        "ours_over_best_peer_32": best["ratio"],
        "best_peer_32": best["best_peer"],
        "ours_over_best_peer_32_cpu": best_cpu["ratio"],
        "models_loaded": 4,
    }
    meta = {
        "quick": True,
        "command": "loadtests/bench --quick --peers all",
        "started": "now",
        "host": "test",
        "device": "cpu",
        "model": "demo-classify",
        "precision": "fp32",
        "shape": "demo",
        "dataset": "mixed",
        "server_args": "",
        "pinning": "none",
        "clients": "wrk",
    }
    servers = {
        "ours": {"title": "electra-serve (REST /v1/classify, fp32)", "available": True, "settings": {"models": "m"}},
        "litserve": {
            "title": "LitServe",
            "version": "litserve==0.2.19",
            "available": True,
            "settings": {"max_batch_size": 8},
            "agreement": {"texts": 16, "same_label": 16, "max_score_difference": 1e-6},
            "rss_mb": 512.0,
            "processes": 5,
        },
        "pytriton": {
            "title": "Triton (PyTriton + onnxruntime)",
            "version": "nvidia-pytriton==0.7.0",
            "available": True,
        },
        "infinity": {"title": "infinity", "available": False, "reason": "pip install infinity-emb failed (1): boom"},
    }
    peers = {
        "method": "4 servers up at once",
        "servers": servers,
        "runs": RUNS,
        "table": table,
        "best_32": best,
        "best_32_cpu": best_cpu,
    }
    return {"meta": meta, "summary": summary, "offline": {"sweep": []}, "closed": [], "open": [], "peers": peers}


def test_targets_carry_ours_over_the_best_peer_with_the_2x_goal() -> None:
    rows = {r[0]: r for r in targets(_results_with_peers())}
    row = rows["ours fp32 REST @32 ÷ best peer @32 (best: LitServe; median of 3 side-by-side rounds)"]
    assert row[1:] == ["2.00x", ">= 2x", "yes"]
    assert rows["ours ÷ best peer @32 per server CPU-second (noise-robust estimate)"][1:] == ["2.00x", "(info)", "-"]
    none = _results_with_peers()
    none["summary"].update(ours_over_best_peer_32=None, best_peer_32=None, ours_over_best_peer_32_cpu=None)
    assert targets(none)[-2][1:] == ["-", ">= 2x", "-"]


def test_render_has_the_peers_table_and_the_unavailable_reason() -> None:
    text = render(_results_with_peers())
    assert "## Peers" in text
    header = next(line for line in text.splitlines() if line.startswith("| server") and "clients" in line)
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:7] == ["server", "clients", "seq/s", "p50 ms", "p99 ms", "errors", "server cores"]
    assert cells[-2:] == ["ours ÷ server", "ours ÷ server per CPU-s"]
    assert "NO: pip install infinity-emb failed (1): boom" in text
    assert "16/16 same label" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    lit32 = next(r for r in rows if r[:2] == ["LitServe", "32"])
    assert lit32[2] == "70.0" and lit32[-2:] == ["3.00x", "3.00x"]  # the same CPU for all here
    assert "median **2.00x** (goal >= 2x)" in text


def test_render_without_peers_has_no_peers_section() -> None:
    results = _results_with_peers()
    del results["peers"]
    results["summary"] = {"models_loaded": 4}
    text = render(results)
    assert "## Peers" not in text and "best peer" not in text
    skipped = _results_with_peers()
    skipped["peers"] = {"skipped": "the peers are configured for the CPU only"}
    assert "Not measured: the peers are configured for the CPU only." in render(skipped)


def test_plot_draws_one_line_per_server(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = plot_peers(_results_with_peers()["peers"], tmp_path, plt)
    assert path == tmp_path / "peers_throughput_vs_clients.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_peers({}, tmp_path, plt) is None


# -- stopping a server made of several processes ----------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A parent that forks a worker which ignores SIGTERM, as a stuck inference worker would.
    script = "trap '' TERM; sleep 60 & trap 'exit 0' TERM; wait"
    server = ServerProcess(None, 1, name="forking", command=["sh", "-c", script], group=True, group_grace_s=0.5)
    server.launch()
    time.sleep(0.3)
    assert len(procstat.tree_pids(server.pid)) >= 2
    assert procstat.tree_cpu_seconds(server.pid) >= 0.0
    started = time.monotonic()
    server.stop(timeout_s=5)
    assert not _group_alive(server.pid)
    assert time.monotonic() - started < 5


def test_stop_without_group_signals_the_leader_only() -> None:
    server = ServerProcess(subprocess.Popen(["sleep", "30"], start_new_session=True), 1, name="plain")
    assert server.stop(timeout_s=5) == -signal.SIGTERM
    assert server.stop() == -signal.SIGTERM  # stopping twice is harmless


def test_a_server_that_exits_before_it_is_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    server = ServerProcess(
        None, free_port(), name="broken", command=["sh", "-c", "echo no model here; exit 3"], log_path=tmp_path / "log"
    )
    with pytest.raises(RuntimeError, match=r"broken exited with 3:\n.*no model here"):
        server.launch().wait_ready(timeout_s=30)
    with pytest.raises(RuntimeError, match=re.escape(f"broken exited with 3; see {tmp_path / 'log'}")):
        server.start(timeout_s=30)  # the benches' way: the log's path, not its text
    assert server.stop() == 3


def _states(pgid: int) -> set[str]:
    """The run states (proc(5): S sleeping, T stopped) of every process of a group."""
    states = set()
    for pid in procstat.tree_pids(pgid):
        with contextlib.suppress(OSError):
            states.add(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0])
    return states


def test_pause_stops_the_whole_group_and_stop_still_ends_a_paused_one() -> None:
    script = "sleep 60 & wait"
    server = ServerProcess(None, 1, name="polling", command=["sh", "-c", script], group=True, group_grace_s=0.5)
    server.launch()
    time.sleep(0.3)
    server.pause()
    time.sleep(0.2)
    assert _states(server.pid) == {"T"}
    server.resume()
    time.sleep(0.2)
    assert "T" not in _states(server.pid)
    server.pause()
    server.stop(timeout_s=5)  # SIGTERM reaches a stopped group only once it is continued
    assert not _group_alive(server.pid)


class _Pausable:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def pause(self) -> None:
        self.log.append(f"pause {self.name}")

    def resume(self) -> None:
        self.log.append(f"resume {self.name}")


def test_pollers_are_paused_while_another_server_runs_and_resumed_for_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loadtests.peers import phase

    monkeypatch.setattr(phase, "RESUME_SETTLE_S", 0.0)
    log: list[str] = []
    ours, poller = (argparse.Namespace(name=n, server=_Pausable(log, n)) for n in ("ours", "litserve"))
    paused: set[str] = set()
    for current in (ours, poller, ours, ours):
        phase._pause_others(current, [poller], paused)  # type: ignore[list-item]
        log.append(f"measure {current.name}")
    assert log == [
        "pause litserve", "measure ours", "resume litserve", "measure litserve",
        "pause litserve", "measure ours", "measure ours",
    ]  # fmt: skip
