"""electra-serve's benchmark: one command, one run, the same model and the same inputs for every
row, and a table of the ratios that matter.

    loadtests/bench --quick            # about 3 minutes on 2 cores
    loadtests/bench                    # the full run (about 17 minutes on 2 cores)
    loadtests/bench --device cuda --model-shape large --dataset fixed128   # on a GPU host

It measures, in this order:
1. the offline ceiling: the server's own runtime class with no server, swept over batch size,
   FIFO or length-sorted order, threads per session and sessions in parallel (model only:
   rows tokenized beforehand; the best configuration is re-run with tokenization included);
2. side-by-side rounds: the best offline configuration, then the server over REST at 32
   clients, alternately, so a noisy shared host weighs on both the same way (medians reported);
3. the server, closed loop at 1, 8, 32, 128 clients, over every protocol it offers (REST with
   wrk; typed gRPC, unary calls and one bidirectional Stream per connection, with the Python
   client; KServe v2 HTTP and gRPC with perf_analyzer);
4. the server, open loop with Poisson arrivals at fractions of the saturation throughput;
5. the long-context QA set (offline windows/s and served questions/s);
6. the naive baseline: the transformers pipeline behind FastAPI, one request at a time.
Per load: throughput, p50/p90/p99, errors, mean batch size and padding ratio (scraped from
/metrics before and after), server CPU, the load generator's own CPU, and the CPU the rest of
the machine used meanwhile. Everything runs on 127.0.0.1, bounded in time.

Outputs (loadtests/results/ by default): bench.md (the table), bench.json (raw results),
throughput_vs_concurrency.png, latency_vs_load.png, the servers' logs under logs.tmp/. All of it is
git-ignored but bench.md, the latest run's summary (the figures that matter go to docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from tokenizers import Tokenizer

from loadtests import data, procstat, report
from loadtests.clients import perf_analyzer as pa
from loadtests.clients import python_client, wrk
from loadtests.context import Context, Plan, log
from loadtests.offline import OfflineBench, OfflineConfig, encode_items, grid, padding_ratio, plan_batches
from loadtests.peers import PEERS, parse_peers
from loadtests.peers import phase as peers_phase
from loadtests.promscrape import BatchStats, Samples, parse, value
from loadtests.schedule import rate_ladder
from loadtests.servers import HOST, ServerProcess, electra_server, naive_server, offered_protocols
from loadtests.stats import median, ratio
from loadtests.summary import summarize
from server.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    plan = Plan(
        quick=quick,
        duration_s=4 if quick else 12,
        open_duration_s=6 if quick else 15,
        rounds=4 if quick else 8,
        round_s=4 if quick else 6,
        qa_duration_s=10 if quick else 20,
        concurrencies=[1, 8, 32, 128],
        open_fractions=[0.5, 0.85] if quick else [0.25, 0.5, 0.7, 0.85, 1.0],
        n_texts=2000,
        offline_rows=192 if quick else 600,
        sweep_batches=[1, 4, 8] if quick else [1, 2, 4, 8, 16, 32],
        n_qa=24 if quick else 64,
        qa_concurrency=8,
        naive_concurrencies=[1, 32],
        versus_rounds=2 if quick else 3,
        warmup_s=0 if quick else 2,
        pa_requests=60 if quick else 300,
        other_concurrencies=[32] if quick else [1, 8, 32, 128],
    )
    if args.device == "cuda":
        plan.sweep_batches = [8, 16, 32, 64, 128] if quick else [8, 16, 32, 64, 128, 256]
        plan.concurrencies = [1, 8, 32, 128] if quick else [1, 8, 32, 128, 256]
        plan.other_concurrencies = [32, 128] if quick else plan.concurrencies
        plan.offline_rows = 2048 if quick else 8192
        plan.n_texts = max(plan.n_texts, plan.offline_rows)
    if args.concurrency:
        plan.concurrencies = plan.other_concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.open_fractions:
        plan.open_fractions = [float(f) for f in args.open_fractions.split(",")]
    if args.duration:
        plan.duration_s = plan.open_duration_s = args.duration
    if args.rounds is not None:
        plan.rounds = args.rounds
    return plan


# ---------------------------------------------------------------- setup


def setup_tools(ctx_notes: list[str]) -> None:
    """Install what the bench can use: wrk (apt), matplotlib (pip), perf_analyzer (shared script)."""
    if not wrk.available() and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
        if not wrk.available():
            subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
        ctx_notes.append(f"--setup-tools: wrk {'installed' if wrk.available() else 'could NOT be installed'}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False)
        ctx_notes.append("--setup-tools: pip install matplotlib")
    if pa.find() is None:
        ok = pa.setup()
        ctx_notes.append(f"--setup-tools: perf_analyzer {'set up' if ok else 'could NOT be set up'}")


def resolve_models(
    args: argparse.Namespace, scratch: Path, log: Callable[[str], None]
) -> tuple[Path, str, str | None, Path | None]:
    """(repository, classify model, qa model or None, HF checkpoint for the naive baseline or None)."""
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if args.repository:
        repository = Path(args.repository)
        if not args.model:
            raise SystemExit("--repository needs --model (the classify model to benchmark)")
        return repository, args.model, args.qa_model, Path(args.naive_checkpoint) if args.naive_checkpoint else None
    if args.model_shape == "demo":
        from server.demo_repository import ensure_demo_repository

        log("demo repository (generated offline on first use, about a minute)")
        repository = ensure_demo_repository()
        checkpoint = None
        if not args.skip_naive:
            checkpoint = cache / "demo-classify-checkpoint"
            _child(
                [sys.executable, "-m", "loadtests.models", "checkpoint", "--shape", "demo", "--output", str(checkpoint)]
            )
        return repository, "demo-classify", None if args.skip_qa else "demo-qa", checkpoint
    from loadtests.models import model_name

    precision = "fp16" if args.device == "cuda" else "fp32"
    repository = cache / f"bench-{args.model_shape}-repository"
    checkpoint = cache / f"bench-{args.model_shape}-checkpoint"
    log(f"building the {args.model_shape}-shaped classifier ({precision}) with the project's export (once, cached)")
    _child(
        [
            sys.executable,
            "-m",
            "loadtests.models",
            "repository",
            "--shape",
            args.model_shape,
            "--output",
            str(repository),
            "--precisions",
            precision,
            "--checkpoint",
            str(checkpoint),
        ]
    )
    return repository, model_name(args.model_shape), None, checkpoint


def _child(command: Sequence[str]) -> None:
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}")


def write_inputs(
    args: argparse.Namespace, plan: Plan, scratch: Path, repository: Path, model: str, qa_model: str | None
) -> tuple[Path, list[dict[str, Any]], Path | None, Path | None, str]:
    tokenizer = Tokenizer.from_file(str(repository / model / "tokenizer.json"))
    if args.dataset == "fixed128":
        texts = data.fixed_texts(tokenizer, plan.n_texts, 128)
    else:
        texts = data.mixed_texts(tokenizer, plan.n_texts)
    k = args.inputs_per_request
    bodies = [
        {"model": model, "inputs": texts[i] if k == 1 else texts[i : i + k]} for i in range(0, len(texts) - k + 1, k)
    ]
    bodies_file = scratch / "bodies-classify.jsonl"
    bodies_file.write_bytes(b"\n".join(orjson.dumps(b) for b in bodies) + b"\n")
    lengths = data.token_lengths(tokenizer, texts)
    describe = (
        f"{args.dataset} set of {len(texts)} generated texts (seeded), tokens min {min(lengths)} / median "
        f"{int(median(lengths))} / mean {sum(lengths) / len(lengths):.1f} / max {max(lengths)}"
        + (f"; {k} texts per request" if k > 1 else "; one text per request")
    )
    pa_file = None
    if k == 1:
        pa_file = pa.write_input_data(scratch / "perf_analyzer-classify.json", bodies, "classify")
    qa_file = None
    if qa_model:
        qa_tok = Tokenizer.from_file(str(repository / qa_model / "tokenizer.json"))
        pairs = data.qa_pairs(qa_tok, plan.n_qa)
        qa_file = scratch / "bodies-qa.jsonl"
        qa_file.write_bytes(
            b"\n".join(
                orjson.dumps({"model": qa_model, "inputs": {"question": p.question, "context": p.context}})
                for p in pairs
            )
            + b"\n"
        )
    return bodies_file, bodies, qa_file, pa_file, describe


# ---------------------------------------------------------------- measuring the server


def scrape(server: ServerProcess) -> Samples:
    return parse(httpx.get(server.url + "/metrics", timeout=10).text)


def mean_inference_s(before: Samples, after: Samples, model: str) -> float | None:
    n = value(after, "electra_inference_duration_seconds_count", model=model) - value(
        before, "electra_inference_duration_seconds_count", model=model
    )
    total = value(after, "electra_inference_duration_seconds_sum", model=model) - value(
        before, "electra_inference_duration_seconds_sum", model=model
    )
    return total / n if n else None


def load(
    ctx: Context,
    protocol: str,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    task: str = "classify",
    duration_s: float | None = None,
    server: ServerProcess | None = None,
    model: str | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    """One load run against a server, with /metrics and CPU around it."""
    server = server or ctx.server
    assert server is not None
    duration = duration_s or ctx.plan.duration_s
    model = model or (ctx.model if task == "classify" else ctx.qa_model)
    bodies = ctx.bodies if task == "classify" else ctx.qa_bodies
    assert bodies is not None and model is not None
    electra = protocol != "naive"
    before = scrape(server) if electra else {}
    meter = procstat.CpuMeter(server.pid, tree=True)  # with --workers the server is a process tree
    client = ctx.args.client
    use_wrk = (
        protocol in ("rest", "naive") and rate is None and (client == "wrk" or (client == "auto" and wrk.available()))
    )
    meter.start()
    if use_wrk:
        path = "/v1/classify" if task == "classify" else "/v1/qa"
        result = wrk.run(
            server.url + path,
            bodies,
            concurrency=concurrency or 1,
            duration_s=duration,
            protocol=protocol,
            threads=ctx.args.client_threads,
            offset=offset,
            inputs_per_request=ctx.args.inputs_per_request if task == "classify" else 1,
            prefix=ctx.client_prefix,
        )
        cpu = asdict(meter.stop(result.client_cpu_s))
    elif protocol in ("v2-http", "v2-grpc"):
        if ctx.pa_data is None:
            raise RuntimeError("perf_analyzer input data needs one input per request")
        port = server.grpc_port if protocol == "v2-grpc" else server.http_port
        result = pa.run(
            model=model,
            protocol=protocol,
            address=f"{HOST}:{port}",
            data_file=ctx.pa_data,
            concurrency=concurrency or 1,
            min_requests=ctx.plan.pa_requests,
            prefix=ctx.client_prefix,
        )
        cpu = asdict(meter.stop(result.client_cpu_s))
        cpu["client_cores"] = result.client_cpu_s / max(cpu["wall_s"], 1e-9)
    else:
        result = python_client.run(
            target="grpc" if protocol in ("grpc", "grpc-stream") else "http",
            protocol=protocol,
            url=server.url + ("/v1/classify" if task == "classify" else "/v1/qa"),
            address=server.grpc_target,
            bodies_file=bodies,
            task=task,
            mode="closed" if rate is None else "open",
            concurrency=concurrency,
            rate=rate,
            duration_s=duration,
            seed=ctx.args.seed,
            offset=offset,
            processes=ctx.args.client_processes,
            channels=ctx.args.grpc_channels,
            grpc_call="stream" if protocol == "grpc-stream" else "unary",
            inputs_per_request=ctx.args.inputs_per_request if task == "classify" else 1,
            prefix=ctx.client_prefix,
            server_pid=server.pid,
        )
        meter.stop(0.0)
        cpu = result.extra.pop("cpu", None)
    out = result.as_dict()
    out["cpu"] = cpu
    if electra:
        after = scrape(server)
        out["batch"] = asdict(BatchStats.between(before, after, model))
        out["batch_compute_s"] = mean_inference_s(before, after, model)
    return out


def describe_load(r: dict[str, Any]) -> str:
    lat = r["latency"]
    batch = r.get("batch") or {}
    what = f"c={r['concurrency']}" if r["mode"] == "closed" else f"rate={r['offered_rate']:.1f}/s"
    mb = batch.get("mean_batch_size")
    pad = batch.get("mean_padding_ratio")
    return (
        f"{r['protocol']:8s} {what:12s} {r['seqs_per_s']:8.1f} seq/s  p50 {lat['p50_s'] * 1000:7.1f} ms"
        f"  p99 {lat['p99_s'] * 1000:7.1f} ms  err {r['errors']}"
        + (f"  batch {mb:.2f} pad {pad:.3f}" if mb is not None and pad is not None else "")
        + (
            f"  cores s/c/o {r['cpu']['server_cores']:.2f}/{r['cpu']['client_cores']:.2f}/{r['cpu']['other_cores']:.2f}"
            if r.get("cpu")
            else ""
        )
    )


# ---------------------------------------------------------------- the phases


@contextlib.contextmanager
def affinity(cores: list[int] | None):
    """Run the offline measurements on the server's cores when pinning is asked for."""
    if not cores:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def offline_phase(ctx: Context, bench: OfflineBench, rows: list[Any], cores: int) -> dict[str, Any]:
    configs = grid(ctx.plan.sweep_batches, cores, ctx.args.device)
    if ctx.plan.quick and ctx.args.device == "cpu":
        # The quick sweep skips the one-session-per-core-starved shapes that never win here.
        configs = [c for c in configs if c.sessions * max(c.threads, 1) == cores or c.batch_size == 1]
    sweep = []
    for config in configs:
        r = bench.measure(rows, config)
        sweep.append(
            {
                "label": config.label,
                "config": asdict(config),
                "seqs_per_s": r.seqs_per_s,
                "padding_ratio": r.padding_ratio,
            }
        )
        ctx.log(f"offline {config.label:22s} {r.seqs_per_s:8.1f} seq/s  padding {r.padding_ratio:.3f}")
    best = max(sweep, key=lambda r: r["seqs_per_s"])
    return {"sweep": sweep, "best": best, "rows": len(rows)}


def _per_cpu_s(run: dict[str, Any]) -> float | None:
    """Sequences per CPU-second of the server over a load run."""
    cpu = run.get("cpu") or {}
    server_cpu_s = cpu.get("server_cores", 0) * cpu.get("wall_s", 0)
    return run["requests"] * run["inputs_per_request"] / server_cpu_s if server_cpu_s else None


def rounds_phase(
    ctx: Context, bench: OfflineBench, rows: list[Any], texts: list[str], contenders: list[OfflineConfig]
) -> list[dict[str, Any]]:
    """Side by side, round after round: the offline contenders (the best of them is the round's
    ceiling), the best one again with tokenization, REST @32, and gRPC @32 (unary calls, then the
    bidirectional Stream) when offered."""
    rounds = []
    wanted = ctx.args.protocols.split(",")
    grpc = ctx.protocols.get("grpc", False) and "grpc" in wanted
    grpc_stream = ctx.protocols.get("grpc-stream", False) and "grpc-stream" in wanted
    for i in range(ctx.plan.rounds):
        with affinity(ctx.server_cores):
            measured = [bench.measure(rows, c) for c in contenders]
            off = max(measured, key=lambda r: r.seqs_per_s)
            off_tok = bench.measure(rows, off.config, texts=texts)
        served = load(ctx, "rest", concurrency=32, offset=i * 131, duration_s=ctx.plan.round_s)
        entry: dict[str, Any] = {
            "offline": off.seqs_per_s,
            "offline_config": off.config.label,
            "offline_tok": off_tok.seqs_per_s,
            "offline_per_cpu_s": max(r.seqs_per_cpu_s for r in measured),
            "served": served["seqs_per_s"],
            "served_per_cpu_s": _per_cpu_s(served),
            "client_cores": (served.get("cpu") or {}).get("client_cores"),
            "other_cores": (served.get("cpu") or {}).get("other_cores"),
            "padding": (served.get("batch") or {}).get("mean_padding_ratio"),
            "load": served,
        }
        if grpc:
            typed = load(ctx, "grpc", concurrency=32, offset=i * 131, duration_s=ctx.plan.round_s)
            entry.update(grpc=typed["seqs_per_s"], grpc_per_cpu_s=_per_cpu_s(typed), grpc_load=typed)
        if grpc_stream:
            streamed = load(ctx, "grpc-stream", concurrency=32, offset=i * 131, duration_s=ctx.plan.round_s)
            entry.update(
                grpc_stream=streamed["seqs_per_s"],
                grpc_stream_per_cpu_s=_per_cpu_s(streamed),
                grpc_stream_load=streamed,
            )
        if ctx.ab_server is not None:
            other = load(ctx, "rest", concurrency=32, offset=i * 131, server=ctx.ab_server, duration_s=ctx.plan.round_s)
            entry["served_ab"] = other["seqs_per_s"]
            entry["padding_ab"] = (other.get("batch") or {}).get("mean_padding_ratio")
        rounds.append(entry)
        ctx.log(
            f"round {i + 1}/{ctx.plan.rounds}: offline {off.seqs_per_s:.1f} ({off.config.label}), "
            f"+tokenize {off_tok.seqs_per_s:.1f}, REST@32 {served['seqs_per_s']:.1f} seq/s "
            f"-> {served['seqs_per_s'] / off.seqs_per_s:.2f}x"
            + (f"; gRPC@32 {entry['grpc']:.1f}" if "grpc" in entry else "")
            + (f"; gRPC stream@32 {entry['grpc_stream']:.1f}" if "grpc_stream" in entry else "")
            + (f"; A/B baseline REST@32 {entry['served_ab']:.1f}" if "served_ab" in entry else "")
        )
    return rounds


# Protocols the side-by-side rounds measure at 32 clients: (the round's figure, its load run).
ROUND_KEYS = {
    "rest": ("served", "load"),
    "grpc": ("grpc", "grpc_load"),
    "grpc-stream": ("grpc_stream", "grpc_stream_load"),
}


def closed_phase(ctx: Context, protocols: list[str], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for protocol in protocols:
        for c in ctx.plan.concurrencies if protocol == "rest" else ctx.plan.other_concurrencies:
            key = ROUND_KEYS.get(protocol)
            if key and c == 32 and rounds and all(key[0] in r for r in rounds):
                # Already measured side by side with the ceiling: the median round stands for it.
                ordered = sorted(rounds, key=lambda r: r[key[0]])
                results.append(ordered[len(ordered) // 2][key[1]])
                ctx.log(describe_load(results[-1]) + "  (median round)")
                continue
            if ctx.plan.warmup_s:
                with contextlib.suppress(Exception):
                    load(ctx, protocol, concurrency=c, duration_s=ctx.plan.warmup_s)
            try:
                r = load(ctx, protocol, concurrency=c, offset=c * 17)
            except Exception as exc:  # one protocol failing must not lose the rest of the run
                ctx.notes.append(f"{protocol} at {c} clients failed: {exc}")
                ctx.log(f"{protocol} c={c} FAILED: {exc}")
                continue
            results.append(r)
            ctx.log(describe_load(r))
    return results


def open_phase(ctx: Context, saturation: float, protocols: list[str]) -> list[dict[str, Any]]:
    results = []
    for protocol in protocols:
        for rate in rate_ladder(saturation, ctx.plan.open_fractions):
            try:
                r = load(ctx, protocol, rate=rate, duration_s=ctx.plan.open_duration_s)
            except Exception as exc:
                ctx.notes.append(f"open loop {protocol} at {rate}/s failed: {exc}")
                continue
            r["fraction"] = rate / saturation
            results.append(r)
            ctx.log(describe_load(r))
    return results


def qa_phase(ctx: Context, cores: int) -> dict[str, Any] | None:
    if not ctx.qa_model or ctx.qa_bodies is None:
        return None
    model_dir = ctx.repository / ctx.qa_model
    items = [orjson.loads(line)["inputs"] for line in ctx.qa_bodies.read_bytes().splitlines() if line.strip()]
    per_item = encode_items(model_dir, items)
    rows = [r for item in per_item for r in item]
    windows_per_question = len(rows) / len(items)
    lengths = [len(r) for r in rows]
    bench = OfflineBench(model_dir, ctx.args.device)
    # The server's own token budget (what the user passed, else its device default).
    budget = load_settings(list(ctx.args.server_arg)).core_config().batch_policy(ctx.args.device).max_batch_tokens
    measured = []
    candidates = (
        [OfflineConfig(b, "sorted", 1, cores) for b in ((1, 4) if ctx.plan.quick else (1, 4, 8))]
        if ctx.args.device == "cpu"
        else [OfflineConfig(b, "sorted", 0, 1) for b in (8, 32)]
    )
    with affinity(ctx.server_cores):
        for config in candidates:
            r = bench.measure(rows, config, max_tokens=budget)
            measured.append((r.seqs_per_s, config, r.seqs_per_cpu_s))
            ctx.log(f"qa offline {config.label}: {r.seqs_per_s:.1f} windows/s")
    bench.close()
    best_rate, best_config, best_per_cpu = max(measured, key=lambda m: m[0])
    # QA requests take a second or more each: warm up, then a window long enough for steady state.
    load(ctx, "rest", concurrency=ctx.plan.qa_concurrency, task="qa", duration_s=3)
    served = load(ctx, "rest", concurrency=ctx.plan.qa_concurrency, task="qa", duration_s=ctx.plan.qa_duration_s)
    ctx.log("qa " + describe_load(served))
    batch = served.get("batch") or {}
    rows_out = [
        {
            "what": f"offline ceiling ({best_config.label}, model only)",
            "questions_per_s": best_rate / windows_per_question,
            "windows_per_s": best_rate,
            "windows_per_cpu_s": best_per_cpu,
            "padding": padding_ratio(lengths, plan_batches(lengths, best_config.batch_size, "sorted", budget)),
        },
        {
            "what": f"served REST /v1/qa @{ctx.plan.qa_concurrency}",
            "questions_per_s": served["throughput"],
            "windows_per_s": served["throughput"] * windows_per_question,
            "windows_per_cpu_s": (_per_cpu_s(served) or 0) * windows_per_question or None,
            "p50_s": served["latency"]["p50_s"],
            "p99_s": served["latency"]["p99_s"],
            "mean_batch_size": batch.get("mean_batch_size"),
            "padding": batch.get("mean_padding_ratio"),
        },
    ]
    qa_lengths = sorted(lengths)
    return {
        "description": (
            f"{len(items)} questions over contexts of 300-1,500 tokens: {len(rows)} windows of up to 384 tokens"
            f" ({windows_per_question:.2f} per question, window tokens median {qa_lengths[len(qa_lengths) // 2]});"
            f" served ÷ offline = {served['throughput'] * windows_per_question / best_rate:.2f}x in windows/s,"
            f" {((_per_cpu_s(served) or 0) * windows_per_question) / best_per_cpu:.2f}x in windows per CPU-second"
            " (the latter is robust to other processes on a shared host)"
        ),
        "rows": rows_out,
        "served": served,
    }


def versus_phase(ctx: Context, with_int8: bool, with_naive: bool) -> dict[str, Any]:
    """Ours (fp32 and, on CPU, the export's int8 variant) against the naive baseline, side by side.

    The three servers run at once and are loaded in turn, round after round: the naive server at
    each of its concurrencies, then ours at 32 clients in each precision. Each round's ratio is ours
    over the naive server's best figure in that round (neighbours in time on a noisy host); the
    median of the rounds is the figure of merit.
    """
    manifest = json.loads((ctx.repository / ctx.model / "manifest.json").read_text())
    with_int8 = with_int8 and ctx.args.device == "cpu" and "int8" in manifest.get("variants", {})
    with_naive = with_naive and not ctx.args.skip_naive and ctx.checkpoint is not None
    if not (with_int8 or with_naive):
        return {}
    servers: dict[str, ServerProcess] = {
        "fp32": electra_server(
            ctx.repository,
            device=ctx.args.device,
            models=[ctx.model],
            extra_args=list(ctx.args.server_arg),
            cores=ctx.server_cores,
            log_path=ctx.logs / "electra-serve-versus.log",
        )
    }
    if with_int8:
        servers["int8"] = electra_server(
            ctx.repository,
            device="cpu",
            models=[ctx.model],
            extra_args=[*ctx.args.server_arg, "--precision", "int8"],
            cores=ctx.server_cores,
            log_path=ctx.logs / "electra-serve-int8.log",
        )
    if with_naive:
        assert ctx.checkpoint is not None
        servers["naive"] = naive_server(
            ctx.checkpoint, device=ctx.args.device, cores=ctx.server_cores, log_path=ctx.logs / "naive-server.log"
        )
    ours_name = "fp32" if ctx.args.device == "cpu" else "fp16"
    ctx.log(f"versus: starting {', '.join(servers)} servers (loaded in turn, {ctx.plan.versus_rounds} rounds)")
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for name, server in servers.items():
            stack.enter_context(server.start(timeout_s=600))
            # First requests (connections, lazy imports, the naive pipeline's first call) unmeasured.
            protocol = "naive" if name == "naive" else "rest"
            load(ctx, protocol, concurrency=8, duration_s=1, server=server)
        for i in range(ctx.plan.versus_rounds):
            entry: dict[str, Any] = {"round": i + 1, "naive": {}}
            if with_naive:
                for c in ctx.plan.naive_concurrencies:
                    r = load(ctx, "naive", concurrency=c, server=servers["naive"], duration_s=ctx.plan.round_s)
                    entry["naive"][c] = r
            entry["ours"] = load(ctx, "rest", concurrency=32, server=servers["fp32"], duration_s=ctx.plan.round_s)
            entry["ours"]["protocol"] = f"rest-{ours_name}"
            if with_int8:
                entry["int8"] = load(ctx, "rest", concurrency=32, server=servers["int8"], duration_s=ctx.plan.round_s)
                entry["int8"]["protocol"] = "rest-int8"
                entry["int8"]["agreement"] = manifest["variants"]["int8"].get("parity", {}).get("top1_agreement")
            best = max((r["seqs_per_s"] for r in entry["naive"].values()), default=None)
            entry["naive_best"] = best
            entry["ours_over_naive"] = ratio(entry["ours"]["seqs_per_s"], best)
            if with_int8:
                entry["int8_over_naive"] = ratio(entry["int8"]["seqs_per_s"], best)
                entry["int8_over_ours"] = ratio(entry["int8"]["seqs_per_s"], entry["ours"]["seqs_per_s"])
            rounds.append(entry)
            ctx.log(
                f"versus round {i + 1}: naive best {fmt_or_dash(best)} seq/s, ours {entry['ours']['seqs_per_s']:.1f}"
                + (f", int8 {entry['int8']['seqs_per_s']:.1f}" if with_int8 else "")
            )
    # The tables show the round whose naive figure is the median one (every round is in bench.json).
    shown = sorted(rounds, key=lambda r: r["naive_best"] or 0)[len(rounds) // 2]

    def median_of(key: str) -> float | None:
        values = [r[key] for r in rounds if r.get(key)]
        return median(values) if values else None

    return {
        "rounds": rounds,
        "naive": list(shown["naive"].values()),
        "int8": shown.get("int8"),
        "naive_best": median_of("naive_best"),
        "ours_over_naive": median_of("ours_over_naive"),
        "int8_over_naive": median_of("int8_over_naive"),
        "int8_over_ours": median_of("int8_over_ours"),
    }


def fmt_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def settle(server: ServerProcess, timeout_s: float = 30.0) -> None:
    """Wait until the server has no request in flight and no row queued (a client that stopped
    leaves work behind that still holds memory), then a moment for the frees."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(server)
        busy = value(samples, "electra_inflight_requests") + value(samples, "electra_queue_depth")
        if busy <= 0:
            break
        time.sleep(0.25)
    time.sleep(2.0)


def gpu_memory() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


# ---------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadtests/bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="loadtests/bench --frontend [ARGS]: the front end alone on the simulated runtime, one worker"
        " against N (loadtests/frontend.py; `loadtests/bench --frontend --help` for its ARGS).\n"
        "loadtests/bench --owner [ARGS]: the model owner alone, driven over its socket as an API worker"
        " would (loadtests/owner.py).",
    )
    p.add_argument("--quick", action="store_true", help="short run (about 3 minutes on 2 cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--model-shape",
        choices=("demo", "tiny", "small", "large"),
        default="demo",
        help="demo: the demo repository; tiny|small|large: a classifier of that shape built with the "
        "project's export (fp16 on cuda, fp32 on cpu), cached",
    )
    p.add_argument("--repository", help="benchmark an existing model repository instead (with --model)")
    p.add_argument("--model", help="the classify model to benchmark (with --repository)")
    p.add_argument("--qa-model", help="the qa model for the long-context set (with --repository)")
    p.add_argument("--naive-checkpoint", help="HF checkpoint of --model for the naive baseline (with --repository)")
    p.add_argument(
        "--dataset",
        choices=("mixed", "fixed128"),
        default="mixed",
        help="mixed: 8-128 tokens; fixed128: every text 128 tokens (the GPU target's condition)",
    )
    p.add_argument("--inputs-per-request", type=int, help="texts per classify request (default: 1 on cpu, 8 on cuda)")
    p.add_argument(
        "--protocols",
        default="rest,grpc,grpc-stream,v2-http,v2-grpc",
        help="closed-loop protocols to measure, when the server offers them (grpc: typed unary calls;"
        " grpc-stream: the typed bidirectional Stream, one per connection)",
    )
    p.add_argument(
        "--open-protocols", default="rest", help="protocols for the open-loop (Poisson) runs: rest, grpc, grpc-stream"
    )
    p.add_argument("--concurrency", help="comma list of closed-loop client counts (default 1,8,32,128)")
    p.add_argument("--open-fractions", help="comma list of open-loop rates as fractions of saturation")
    p.add_argument("--duration", type=float, help="seconds per load point")
    p.add_argument("--rounds", type=int, help="side-by-side rounds of offline vs REST@32")
    p.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop REST client (auto: wrk when installed)",
    )
    p.add_argument("--client-threads", type=int, help="wrk threads (default: 1 on cpu, 4 on cuda)")
    p.add_argument("--client-processes", type=int, help="processes of the Python client (default: 1 on cpu, 4 on cuda)")
    p.add_argument(
        "--grpc-channels", type=int, help="connections of the Python gRPC client (default: 1 on cpu, 4 on cuda)"
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the server (and the offline runs) to all cores but the last, the clients to the last",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra electra-serve flag (repeat; e.g. --server-arg=--max-batch-size=16)",
    )
    p.add_argument(
        "--phases",
        default="sweep,rounds,closed,open,qa,int8,naive",
        help="what to run (comma list of sweep, rounds, closed, open, qa, int8, naive)",
    )
    p.add_argument(
        "--offline-config",
        help="skip the sweep and use this offline configuration: BATCH,fifo|sorted,THREADS,SESSIONS",
    )
    p.add_argument(
        "--ab-root",
        help="also run the server from this checkout and measure it in every side-by-side round (A/B)",
    )
    p.add_argument(
        "--peers",
        type=parse_peers,
        help="also measure other servers on the same model, inputs and load generator, side by side with"
        f" ours: a comma list of {', '.join(PEERS)}, or all (each installed into its own venv under"
        " --cache-dir/peers on first use)",
    )
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-qa", action="store_true")
    p.add_argument("--setup-tools", action="store_true", help="install wrk / matplotlib / perf_analyzer if missing")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="output directory")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "electra-serve" / "bench"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # A GPU serves thousands of sequences a second: one Python event loop parsing one text per
    # request would be the limit, and so would a one-thread client.
    gpu = args.device == "cuda"
    for name, cpu_default, gpu_default in (
        ("inputs_per_request", 1, 8),
        ("client_threads", 1, 4),
        ("client_processes", 1, 4),
        ("grpc_channels", 1, 4),
    ):
        if getattr(args, name) is None:
            setattr(args, name, gpu_default if gpu else cpu_default)
    return args


# ---------------------------------------------------------------- the run, step by step


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--frontend"]:  # the front end alone, on the simulated runtime
        from loadtests import frontend

        return frontend.main(argv[1:])
    if argv[:1] == ["--owner"]:  # the model owner alone, driven over its socket
        from loadtests import owner

        return owner.main(argv[1:])
    ctx = setup(argv)
    ceiling = offline_ceiling(ctx)
    served = serve(ctx, ceiling)
    versus = versus_phase(ctx, with_int8="int8" in ctx.phases, with_naive="naive" in ctx.phases)
    peers = peers_phase.run(ctx, ctx.args.peers) if ctx.args.peers else None
    write_outputs(ctx, assemble(ctx, ceiling, served, versus, peers))
    return 0


def setup(argv: list[str] | None) -> Context:
    """Arguments, output folders, tools, the device, the models, the inputs and the cores."""
    args = parse_args(argv)
    plan = make_plan(args)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "inputs.tmp"  # git-ignored, as all of results/ but bench.md
    scratch.mkdir(exist_ok=True)
    logs = out / "logs.tmp"  # the servers' logs, kept for a look when something fails
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    notes: list[str] = []
    if args.setup_tools:
        setup_tools(notes)
    if args.device == "cuda":
        prepare_cuda(args)
    repository, model, qa_model, checkpoint = resolve_models(args, scratch, log)
    bodies_file, bodies, qa_file, pa_file, dataset = write_inputs(args, plan, scratch, repository, model, qa_model)
    cores = os.cpu_count() or 1
    server_cores, client_cores = split_cores(cores) if args.pin else (None, None)
    if not wrk.available():
        notes.append(wrk.INSTALL_HINT + " (REST closed loop used the Python client)")
    if pa.find() is None:
        notes.append(pa.INSTALL_HINT + " (KServe v2 rows skipped)")
    return Context(
        args=args,
        plan=plan,
        out=out,
        scratch=scratch,
        logs=logs,
        repository=repository,
        model=model,
        qa_model=qa_model,
        checkpoint=checkpoint,
        bodies=bodies_file,
        bodies_list=bodies,
        qa_bodies=qa_file,
        pa_data=pa_file,
        server_cores=server_cores,
        client_prefix=["taskset", "-c", ",".join(map(str, client_cores))] if client_cores else [],
        notes=notes,
        argv=argv,
        started=started,
        dataset=dataset,
        cores=cores,
        client_cores=client_cores,
        phases=wanted_phases(args),
    )


def prepare_cuda(args: argparse.Namespace) -> None:
    """Fail at once when CUDA is not really usable; GPU defaults for the server's batches."""
    from server.core import cuda

    cuda.preload_dlls()
    usable, reason = cuda.cuda_usable()
    if not usable:
        raise SystemExit(f"--device cuda: CUDA is not usable here: {reason}")
    if not args.server_arg:
        # Bigger batches pay on a GPU; the token budget is what bounds memory.
        args.server_arg = ["--max-batch-size=128", "--max-batch-tokens=16384"]


def split_cores(cores: int) -> tuple[list[int], list[int]]:
    """--pin: the server (and the offline runs) on all cores but the last, the clients on the last."""
    if cores < 2:
        raise SystemExit("--pin needs at least 2 cores")
    return list(range(cores - 1)), [cores - 1]


def wanted_phases(args: argparse.Namespace) -> set[str]:
    phases = set(args.phases.split(","))
    if args.skip_naive:
        phases.discard("naive")
    if args.skip_qa:
        phases.discard("qa")
    return phases


@dataclass
class Ceiling:
    """The offline step's outcome: the sweep, and what the side-by-side rounds measure again."""

    bench: OfflineBench
    rows: list[Any]  # the sample tokenized beforehand (model-only runs)
    sample: list[str]  # the same texts (runs with tokenization)
    offline: dict[str, Any]
    contenders: list[OfflineConfig]


def offline_ceiling(ctx: Context) -> Ceiling:
    """The model alone through the server's runtime, before the server starts (nothing else of ours
    runs meanwhile): a sweep, or the configuration given, and the contenders for the rounds."""
    args, plan, bodies = ctx.args, ctx.plan, ctx.bodies_list
    texts = [b["inputs"] for b in bodies] if args.inputs_per_request == 1 else [t for b in bodies for t in b["inputs"]]
    sample = texts[: plan.offline_rows]
    rows = [r[0] for r in encode_items(ctx.repository / ctx.model, sample)]
    bench = OfflineBench(ctx.repository / ctx.model, args.device)
    if args.offline_config:
        b, order, threads, sessions = args.offline_config.split(",")
        best = OfflineConfig(int(b), order, int(threads), int(sessions))
        offline = {"sweep": [], "best": {"label": best.label, "config": asdict(best)}, "rows": len(rows)}
    elif "sweep" in ctx.phases or "rounds" in ctx.phases:
        ctx.log(f"offline sweep on {len(rows)} rows of the {args.dataset} set ({args.device})")
        with affinity(ctx.server_cores):
            offline = offline_phase(ctx, bench, rows, ctx.server_core_count)
        best = OfflineConfig(**offline["best"]["config"])
    else:
        best = OfflineConfig(1, "fifo", 0, 1)
        offline = {"sweep": [], "best": {"label": best.label, "config": asdict(best), "seqs_per_s": None}}
    # The sweep is one pass per configuration on a noisy host: its top three all go on to the
    # side-by-side rounds, where each round's ceiling is the best of them.
    ranked = sorted(offline["sweep"], key=lambda r: -r["seqs_per_s"])
    contenders = [OfflineConfig(**r["config"]) for r in ranked[:3]] or [best]
    offline["contenders"] = [c.label for c in contenders]
    offline["providers"] = bench.runtime(best.threads, best.sessions).providers
    if args.device == "cuda" and "CUDAExecutionProvider" not in offline["providers"]:
        raise SystemExit(f"offline runtime fell back to {offline['providers']}: no GPU numbers would be true")
    return Ceiling(bench, rows, sample, offline, contenders)


@dataclass
class Served:
    """What the server's own phases measured."""

    model: dict[str, Any]  # the benchmarked model as GET /v1/models describes it
    protocols: list[str]
    rounds: list[dict[str, Any]]
    closed: list[dict[str, Any]]
    opened: list[dict[str, Any]]
    qa: dict[str, Any] | None
    memory: dict[str, Any]


def serve(ctx: Context, ceiling: Ceiling) -> Served:
    """The server with every demo model: side-by-side rounds with the ceiling, closed loop, open
    loop, long-context QA and memory; the servers stop at the end, on error too."""
    server = electra_server(
        ctx.repository,
        device=ctx.args.device,
        extra_args=ctx.args.server_arg,
        cores=ctx.server_cores,
        log_path=ctx.logs / "electra-serve.log",
    )
    ctx.log(f"starting electra-serve ({shlex.join(server.command)})")
    server.start()
    ctx.server = server
    try:
        if ctx.args.ab_root:
            start_ab_server(ctx)
        served_model, memory = describe_server(ctx, server)
        protocols = measured_protocols(ctx, server)
        # Warm the server's paths once (connections, first-request code paths).
        load(ctx, "rest", concurrency=8, duration_s=1)
        rounds = (
            rounds_phase(ctx, ceiling.bench, ceiling.rows, ceiling.sample, ceiling.contenders)
            if "rest" in protocols and "rounds" in ctx.phases
            else []
        )
        ceiling.bench.close()
        closed = closed_phase(ctx, protocols, rounds) if "closed" in ctx.phases else []
        saturation = max((r["throughput"] for r in closed if r["protocol"] == "rest"), default=0.0)
        open_protocols = [
            p
            for p in ctx.args.open_protocols.split(",")
            if ctx.protocols.get(p) and p in ("rest", "grpc", "grpc-stream")
        ]
        opened = open_phase(ctx, saturation, open_protocols) if saturation and "open" in ctx.phases else []
        qa = qa_phase(ctx, ctx.server_core_count) if "qa" in ctx.phases else None
        settle(server)
        memory.update(memory_after_load(ctx, server))
    finally:
        server.stop()
        if ctx.ab_server is not None:
            ctx.ab_server.stop()
    return Served(served_model, protocols, rounds, closed, opened, qa, memory)


def start_ab_server(ctx: Context) -> None:
    """--ab-root: the server from another checkout, measured in every side-by-side round."""
    ctx.ab_server = electra_server(
        ctx.repository,
        device=ctx.args.device,
        extra_args=ctx.args.server_arg,
        cores=ctx.server_cores,
        log_path=ctx.logs / "electra-serve-ab.log",
        source_root=Path(ctx.args.ab_root),
    )
    ctx.log(f"starting the A/B baseline server from {ctx.args.ab_root}")
    ctx.ab_server.start()
    load(ctx, "rest", concurrency=8, duration_s=1, server=ctx.ab_server)


def describe_server(ctx: Context, server: ServerProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    """The benchmarked model as the server describes it (on a GPU: really on it), and the memory
    after warm-up."""
    described = httpx.get(server.url + "/v1/models", timeout=10).json()["models"]
    served_model = next(m for m in described if m["name"] == ctx.model)
    if ctx.args.device == "cuda" and "CUDAExecutionProvider" not in served_model.get("providers", []):
        raise SystemExit(f"the server's {ctx.model} runs on {served_model.get('providers')}: not on the GPU")
    memory: dict[str, Any] = {"server RSS after warm-up (MB)": round(procstat.tree_rss_bytes(server.pid) / 2**20, 1)}
    memory["models loaded"] = len(described)
    if ctx.args.device == "cuda":
        memory["GPU after warm-up"] = gpu_memory()
    return served_model, memory


def measured_protocols(ctx: Context, server: ServerProcess) -> list[str]:
    """The protocols asked for that the server offers (and that a client here can drive)."""
    ctx.protocols = offered_protocols(server)
    # The typed service's Stream method comes with its unary methods.
    ctx.protocols["grpc-stream"] = ctx.protocols.get("grpc", False)
    wanted = [p for p in ctx.args.protocols.split(",") if p]
    protocols = [p for p in wanted if ctx.protocols.get(p)]
    if pa.find() is None or ctx.pa_data is None:
        protocols = [p for p in protocols if not p.startswith("v2-")]
    for p in wanted:
        if p not in protocols:
            ctx.notes.append(f"{p}: not measured (offered by the server: {ctx.protocols.get(p, False)})")
    ctx.log(f"protocols measured: {', '.join(protocols)}")
    return protocols


def memory_after_load(ctx: Context, server: ServerProcess) -> dict[str, Any]:
    memory: dict[str, Any] = {
        "server RSS after the load, settled (MB)": round(procstat.tree_rss_bytes(server.pid) / 2**20, 1),
        "server peak RSS (MB)": round(procstat.tree_peak_rss_bytes(server.pid) / 2**20, 1),
    }
    if ctx.args.device == "cuda":
        memory["GPU after the load"] = gpu_memory()
    return memory


def assemble(
    ctx: Context, ceiling: Ceiling, served: Served, versus: dict[str, Any], peers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything measured, as bench.json holds it (the report renders from this alone); `peers`
    only when --peers asked for them."""
    args = ctx.args
    summary = summarize(
        device=args.device,
        cores=ctx.cores,
        server_args=args.server_arg,
        offline=ceiling.offline,
        rounds=served.rounds,
        closed=served.closed,
        opened=served.opened,
        versus=versus,
        memory=served.memory,
        ab_root=args.ab_root,
    )
    if peers is not None:
        best = peers.get("best_32") or {}
        summary["ours_over_best_peer_32"] = best.get("ratio")
        summary["best_peer_32"] = best.get("best_peer")
        summary["ours_over_best_peer_32_cpu"] = (peers.get("best_32_cpu") or {}).get("ratio")
    results = {
        "meta": {
            "quick": ctx.plan.quick,
            "command": shlex.join(["loadtests/bench", *(ctx.argv if ctx.argv is not None else sys.argv[1:])]),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "host": f"{platform.node()}, {ctx.cores} cores, {_cpu_model()}, Python {platform.python_version()}",
            "device": args.device,
            "providers": ", ".join(ceiling.offline.get("providers", [])),
            "model": ctx.model,
            "precision": served.model.get("precision"),
            "shape": args.model_shape,
            "dataset": ctx.dataset,
            "server_args": " ".join(args.server_arg),
            "pinning": f"server cores {ctx.server_cores}, clients {ctx.client_cores}"
            if args.pin
            else "none (shared cores)",
            "clients": _clients_line(served.protocols),
            "plan": asdict(ctx.plan),
            "seconds": round(time.monotonic() - ctx.started, 1),
        },
        "summary": summary,
        "offline": ceiling.offline,
        "rounds": [{k: v for k, v in r.items() if k != "load"} for r in served.rounds],
        "closed": served.closed,
        "open": served.opened,
        "qa": served.qa,
        "naive": versus.get("naive") or [],
        "int8": versus.get("int8"),
        "versus": versus.get("rounds") or [],
        "memory": served.memory,
        "notes": ctx.notes,
    }
    if peers is not None:
        results["peers"] = peers
    return results


def write_outputs(ctx: Context, results: dict[str, Any]) -> None:
    """bench.json, bench.md and the plots; the inputs' scratch folder goes."""
    out = ctx.out
    (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.render(results)
    (out / "bench.md").write_text(text + "\n")
    plots = report.plot(results, out)
    shutil.rmtree(ctx.scratch, ignore_errors=True)
    print()
    print(text)
    print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.json'}" + "".join(f", {p}" for p in plots))
    print(f"took {time.monotonic() - ctx.started:.0f}s")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _clients_line(protocols: list[str]) -> str:
    parts = []
    if "rest" in protocols:
        parts.append("REST closed loop: " + ("wrk (C)" if wrk.available() else "Python asyncio (aiohttp)"))
    if "grpc" in protocols or "grpc-stream" in protocols:
        parts.append(
            "gRPC typed: Python, requests serialized beforehand (unary calls on grpc's synchronous API"
            " with completion callbacks; one bidirectional Stream per connection on grpc.aio)"
        )
    if any(p.startswith("v2-") for p in protocols):
        parts.append("KServe v2: perf_analyzer (C++)")
    parts.append("open loop: Python asyncio, Poisson")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
