"""The bench's peers phase: ours (REST /v1/classify, fp32) and each peer up at once, loaded in
turn at every client count, round after round, by the same load generator on the same texts.

A peer that cannot be installed, started or asked here is reported unavailable with the reason;
the others still run. Every server is stopped at the end, on error too (the peers' whole process
groups: LitServe and Triton fork workers).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests import procstat
from loadtests.clients import python_client, wrk
from loadtests.context import Context
from loadtests.peers import PEERS, Batching, Launch, Peer, PeerFiles, bodies_lines, figures
from loadtests.peers.venv import PeerUnavailable, ensure_venv, last_error
from loadtests.servers import ServerProcess, electra_server, free_port, pinned

OURS = figures.OURS
CHECKED_TEXTS = 16  # answers compared with ours before any load (the same model, really)
# A server using this much CPU with no load is polling: it is paused while the others are measured
# (LitServe's processes spend ~0.33 of a core idle here, which the server beside it lost).
POLLING_CORES = 0.05
RESUME_SETTLE_S = 0.5


@dataclass
class Contender:
    """One server of the phase: how to start it, where to send what."""

    name: str
    title: str
    server: ServerProcess
    url_path: str
    bodies: Path  # its request bodies, one a line: the same texts in its own shape
    peer: Peer | None = None  # None: ours

    @property
    def url(self) -> str:
        return self.server.url + self.url_path


def run(ctx: Context, names: list[str]) -> dict[str, Any]:
    """The peers' figures for bench.json (`peers`): each server's status and settings, the runs,
    the table and ours ÷ the best peer @32."""
    if ctx.args.device != "cpu":
        return {"skipped": "the peers are configured for the CPU only; run them with --device cpu"}
    if ctx.args.inputs_per_request != 1:
        return {"skipped": "the peers are compared with one text per request (--inputs-per-request 1)"}
    cache = Path(ctx.args.cache_dir) / "peers"
    texts = [b["inputs"] for b in ctx.bodies_list]
    batching = Batching(instances=ctx.server_core_count)
    status: dict[str, dict[str, Any]] = {}
    contenders = [ours_contender(ctx)]
    status[OURS] = {
        "title": "electra-serve (REST /v1/classify, fp32)",
        "available": True,
        "settings": ours_settings(ctx),
    }
    files = peer_files(ctx, cache, names)
    for name in names:
        peer = PEERS[name]
        status[name] = {"title": peer.title, "version": f"{peer.package}=={peer.version}", "available": False}
        try:
            launch = prepare(ctx, peer, cache, files, batching)
        except (PeerUnavailable, OSError, ValueError) as exc:
            status[name]["reason"] = str(exc) if isinstance(exc, PeerUnavailable) else f"{type(exc).__name__}: {exc}"
            ctx.log(f"peer {name}: unavailable: {exc}")
            continue
        status[name]["settings"] = launch.settings
        bodies = ctx.scratch / f"bodies-peer-{name}.jsonl"
        bodies.write_bytes(bodies_lines(peer, ctx.model, texts))
        server = ServerProcess(
            None,
            launch.http_port,
            log_path=ctx.logs / f"peer-{name}.log",
            extra_env={**launch.env, "PATH": f"{Path(launch.command[0]).parent}:/usr/local/bin:/usr/bin:/bin"},
            name=name,
            command=pinned(launch.command, ctx.server_cores),
            cwd=launch.cwd or cache / name,  # where a peer writes files of its own
            ready_path=launch.ready_path,
            group=True,
        )
        contenders.append(Contender(name, peer.title, server, launch.url_path, bodies, peer))
    runs: list[dict[str, Any]] = []
    pollers: list[Contender] = []
    with contextlib.ExitStack() as stack:
        up = []
        for contender in contenders:
            if start(ctx, stack, contender, status, contenders[0]):
                up.append(contender)
        if len(up) > 1:
            idle_cpu = idle_cores(up)
            for name, cores in idle_cpu.items():
                status[name]["idle_cores"] = round(cores, 3)
            pollers = [c for c in up if idle_cpu[c.name] >= POLLING_CORES]
            for contender in pollers:
                status[contender.name]["paused_while_others_run"] = True
            runs = rounds(ctx, up, pollers, idle_cpu)
    measured = [c.name for c in contenders if status[c.name]["available"]]
    rows = figures.table(runs, measured, ctx.plan.concurrencies)
    peers_measured = [n for n in measured if n != OURS]
    return {
        "method": (
            f"{len(up) if runs else 0} servers up at once, loaded in turn at each client count"
            f" ({', '.join(map(str, ctx.plan.concurrencies))}), {ctx.plan.versus_rounds} rounds of"
            f" {ctx.plan.round_s:.0f} s a point, the order rotated every round; the same texts, one a request;"
            f" load generator: {'wrk with each server its own body file' if wrk.available() else 'Python asyncio'}"
            + (
                f"; paused (SIGSTOP) while another server is measured, as they use CPU with no load"
                f" (>= {POLLING_CORES} cores): {', '.join(c.name for c in pollers)}"
                if pollers
                else ""
            )
        ),
        "servers": status,
        "runs": runs,
        "table": rows,
        "best_32": figures.ours_over_best(runs, peers_measured, 32) if peers_measured else None,
        "best_32_cpu": figures.ours_over_best(runs, peers_measured, 32, "per_cpu_s") if peers_measured else None,
    }


def ours_contender(ctx: Context) -> Contender:
    server = electra_server(
        ctx.repository,
        device=ctx.args.device,
        models=[ctx.model],
        extra_args=list(ctx.args.server_arg),
        cores=ctx.server_cores,
        log_path=ctx.logs / "electra-serve-peers.log",
    )
    return Contender(OURS, "electra-serve", server, "/v1/classify", ctx.bodies)


def ours_settings(ctx: Context) -> dict[str, Any]:
    return {
        "server_args": " ".join(ctx.args.server_arg) or "(defaults: max batch 8 rows, queue delay 2 ms on CPU)",
        "models": ctx.model,
    }


def peer_files(ctx: Context, cache: Path, names: list[str]) -> PeerFiles:
    """The model's files for every peer; the Hugging Face layout only when a peer needs it and a
    checkpoint of the model is at hand."""
    model_dir = ctx.repository / ctx.model
    hf_dir = None
    if any(PEERS[n].needs_hf_dir for n in names):
        checkpoint = ctx.checkpoint or demo_checkpoint(ctx)
        if checkpoint is not None:
            hf_dir = hf_layout(model_dir, checkpoint, cache / "models" / ctx.model)
    return PeerFiles(ctx.model, model_dir, hf_dir)


def demo_checkpoint(ctx: Context) -> Path | None:
    """The demo classifier's HF checkpoint (what the naive baseline loads), built when --skip-naive
    left it out; None for a repository given without its checkpoint."""
    if ctx.args.repository or ctx.args.model_shape != "demo":
        return None
    checkpoint = Path(ctx.args.cache_dir) / "demo-classify-checkpoint"
    command = [sys.executable, "-m", "loadtests.models", "checkpoint", "--shape", "demo", "--output", str(checkpoint)]
    done = subprocess.run(command, capture_output=True, text=True)
    return checkpoint if done.returncode == 0 else None


def hf_layout(model_dir: Path, checkpoint: Path, target: Path) -> Path:
    """The repository's fp32 graph in a Hugging Face layout: the checkpoint's config and tokenizer
    files, the graph as model.onnx, its external weights under the name the graph gives them
    (links, not copies). Built afresh every run: infinity writes its optimised graph beside it."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    variant = manifest["variants"]["fp32"]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for item in Path(checkpoint).iterdir():
        if item.is_file() and item.suffix not in (".safetensors", ".bin", ".onnx"):
            shutil.copy2(item, target / item.name)
    (target / "model.onnx").symlink_to((model_dir / variant["file"]).resolve())
    if variant.get("data_file"):
        (target / variant["data_file"]).symlink_to((model_dir / variant["data_file"]).resolve())
    return target


def prepare(ctx: Context, peer: Peer, cache: Path, files: PeerFiles, batching: Batching) -> Launch:
    """The peer's venv (installed once) and its command line; PeerUnavailable with the reason."""
    if peer.needs_hf_dir and files.hf_dir is None:
        raise PeerUnavailable("needs the model's Hugging Face checkpoint (--naive-checkpoint with --repository)")
    import onnxruntime

    python = ensure_venv(
        cache / peer.name,
        peer.requirements(onnxruntime.__version__),
        probe=peer.probe_import,
        log=ctx.log,
    )
    return peer.launch(python, files, free_port, batching)


def start(
    ctx: Context,
    stack: contextlib.ExitStack,
    contender: Contender,
    status: dict[str, dict[str, Any]],
    ours: Contender,
) -> bool:
    """Start one server (stopped with the stack), check its answers against ours, warm it up.
    Ours failing is the bench failing; a peer failing is that peer unavailable."""
    entry = status[contender.name]
    ctx.log(f"peers: starting {contender.name} ({' '.join(contender.server.command[:3])} ...)")
    try:
        stack.enter_context(contender.server.start(timeout_s=600))
        if contender is not ours:
            entry["agreement"] = agreement(contender, ours, contender.peer)
        measure(ctx, contender, concurrency=8, duration_s=2, offset=0)  # connections, first calls
        if contender.peer is not None and contender.server.log_path is not None:
            entry.setdefault("settings", {}).update(
                contender.peer.findings(contender.server.log_path.read_text(errors="replace"))
            )
        entry["rss_mb"] = round(procstat.tree_rss_bytes(contender.server.pid) / 2**20, 1)
        entry["processes"] = len(procstat.tree_pids(contender.server.pid))
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        contender.server.stop()
        if contender is ours:
            raise
        entry["available"] = False
        entry["reason"] = f"{type(exc).__name__}: {exc}" + log_tail(contender.server.log_path)
        ctx.log(f"peer {contender.name}: unavailable: {entry['reason']}")
        return False
    entry["available"] = True
    return True


def agreement(contender: Contender, ours: Contender, peer: Peer | None) -> dict[str, Any]:
    """The first texts through the peer and through ours: the same labels and scores, or the peer
    does not serve the same model (raised: it is not compared)."""
    assert peer is not None
    texts = [line for line in ours.bodies.read_bytes().splitlines() if line.strip()][:CHECKED_TEXTS]
    peer_bodies = [line for line in contender.bodies.read_bytes().splitlines() if line.strip()][:CHECKED_TEXTS]
    same, worst = 0, 0.0
    with httpx.Client(timeout=30) as client:
        for our_body, their_body in zip(texts, peer_bodies, strict=True):
            mine = client.post(ours.url, content=our_body, headers={"Content-Type": "application/json"})
            theirs = client.post(contender.url, content=their_body, headers={"Content-Type": "application/json"})
            if theirs.status_code != 200:
                raise ValueError(f"answered {theirs.status_code}: {theirs.text[:300]}")
            label, score = peer.answer(theirs.json())
            expected = mine.json()
            expected = expected[0] if isinstance(expected, list) else expected
            same += label == expected["label"]
            worst = max(worst, abs(score - float(expected["score"])))
    if worst > 0.01:
        raise ValueError(f"scores differ from ours by up to {worst:.4f}: not the same model")
    return {"texts": len(texts), "same_label": same, "max_score_difference": worst}


def log_tail(path: Path | None) -> str:
    """The last telling lines of a server's log, for the reason a peer did not start."""
    if path is None or not path.exists():
        return ""
    text = last_error(path.read_text(errors="replace"), limit=600)
    return f" (log: {text})" if text else ""


def rounds(
    ctx: Context, up: list[Contender], pollers: Sequence[Contender] = (), idle_cpu: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Every server at every client count, in rotated order. `pollers` (servers that use CPU while
    idle) are paused while another server is measured and resumed for their own points, so that
    each point sees what the server would alone on the host; after each point the server measured
    is given time to finish what was still queued (down to its idle CPU, `idle_cpu`)."""
    runs = []
    paused: set[str] = set()
    try:
        for i in range(ctx.plan.versus_rounds):
            for c in ctx.plan.concurrencies:
                k = i % len(up)
                for contender in up[k:] + up[:k]:  # rotated: no server always runs first or last
                    _pause_others(contender, pollers, paused)
                    idle = [u for u in up if u is not contender]
                    try:
                        r = measure(ctx, contender, concurrency=c, duration_s=ctx.plan.round_s,
                                    offset=i * 131 + c, idle=idle)  # fmt: skip
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        ctx.notes.append(f"peers: {contender.name} at {c} clients, round {i + 1} failed: {exc}")
                        continue
                    finally:
                        _settle(contender, (idle_cpu or {}).get(contender.name, 0.0) + 0.05)
                    r.update(server=contender.name, round=i + 1)
                    runs.append(r)
                ctx.log(
                    f"peers round {i + 1} c={c}: "
                    + ", ".join(
                        f"{r['server']} {r['seqs_per_s']:.1f}"
                        for r in runs
                        if r["round"] == i + 1 and r["concurrency"] == c
                    )
                )
    finally:
        for contender in pollers:
            contender.server.resume()
    return runs


def _settle(contender: Contender, quiet_cores: float, timeout_s: float = 10.0) -> None:
    """Until the server just measured is idle: when the load generator stops, up to a client count
    of requests are still queued there, and finishing them would take CPU from the next point."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _tree_cpu(contender)
        time.sleep(0.2)
        if (_tree_cpu(contender) - before) / 0.2 < quiet_cores:
            return


def _pause_others(current: Contender, pollers: Sequence[Contender], paused: set[str]) -> None:
    for contender in pollers:
        if contender is current and contender.name in paused:
            contender.server.resume()
            paused.discard(contender.name)
            time.sleep(RESUME_SETTLE_S)
        elif contender is not current and contender.name not in paused:
            contender.server.pause()
            paused.add(contender.name)


def idle_cores(up: list[Contender], seconds: float = 5.0) -> dict[str, float]:
    """Each server's CPU with no load at all (all of them up, as during the rounds): a server that
    polls while idle takes that much from whichever one is being measured."""
    before = {c.name: _tree_cpu(c) for c in up}
    time.sleep(seconds)
    return {c.name: (_tree_cpu(c) - before[c.name]) / seconds for c in up}


def _tree_cpu(contender: Contender) -> float:
    return procstat.tree_cpu_seconds(contender.server.pid)


def measure(
    ctx: Context, contender: Contender, *, concurrency: int, duration_s: float, offset: int,
    idle: Sequence[Contender] = (),
) -> dict[str, Any]:  # fmt: skip
    """One closed-loop run against one server, with the CPU of its whole process tree, and of the
    servers left idle meanwhile (`idle_servers_cores`, part of `other_cores`)."""
    meter = procstat.CpuMeter(contender.server.pid, tree=True)
    idle_before = sum(map(_tree_cpu, idle))
    started = time.monotonic()
    meter.start()
    if wrk.available():
        result = wrk.run(
            contender.url,
            contender.bodies,
            concurrency=concurrency,
            duration_s=duration_s,
            protocol=contender.name,
            threads=ctx.args.client_threads,
            offset=offset,
            prefix=ctx.client_prefix,
        )
    else:
        result = python_client.run(
            target="http",
            protocol=contender.name,
            url=contender.url,
            bodies_file=contender.bodies,
            task="classify",
            mode="closed",
            concurrency=concurrency,
            duration_s=duration_s,
            offset=offset,
            prefix=ctx.client_prefix,
        )
        result.extra.pop("cpu", None)
    out = result.as_dict()
    out["cpu"] = asdict(meter.stop(result.client_cpu_s))
    out["cpu"]["idle_servers_cores"] = (sum(map(_tree_cpu, idle)) - idle_before) / (time.monotonic() - started)
    return out
