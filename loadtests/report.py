"""The bench's outputs: the markdown report (tables, ratios, targets) and the PNG plots.

Everything here works on the plain-dict results the bench collects (also written as JSON), so
a report can be re-rendered from `bench.json` without rerunning anything:

    python -m loadtests.report loadtests/results/bench.json
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.peers import figures
from loadtests.stats import fmt, markdown_table, median, ratio

PROTOCOL_NAMES = {
    "rest": "REST /v1",
    "grpc": "gRPC electra.v1",
    "grpc-stream": "gRPC electra.v1 Stream",
    "v2-http": "KServe v2 HTTP",
    "v2-grpc": "KServe v2 gRPC",
    "naive": "naive (transformers + FastAPI)",
    "rest-int8": "REST /v1 (int8)",
}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)) else seconds * 1000


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def load_rows(loads: Sequence[dict[str, Any]]) -> list[list[object]]:
    rows = []
    for r in loads:
        lat = r["latency"]
        cpu = r.get("cpu") or {}
        batch = r.get("batch") or {}
        rows.append(
            [
                PROTOCOL_NAMES.get(r["protocol"], r["protocol"]),
                r["client"],
                r["concurrency"] if r["mode"] == "closed" else f"{r['offered_rate']:.1f}/s",
                r["seqs_per_s"],
                ms(lat["p50_s"]),
                ms(lat["p90_s"]),
                ms(lat["p99_s"]),
                r["errors"],
                batch.get("mean_batch_size"),
                batch.get("mean_padding_ratio"),
                cpu.get("server_cores"),
                cpu.get("client_cores"),
                cpu.get("other_cores"),
            ]
        )
    return rows


LOAD_HEADERS = [
    "protocol",
    "client",
    "clients / rate",
    "seq/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "errors",
    "mean batch",
    "padding",
    "server cores",
    "client cores",
    "other cores",
]


def _cells(rows: list[list[object]]) -> list[list[str]]:
    out = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            header = LOAD_HEADERS[i] if len(row) == len(LOAD_HEADERS) else ""
            if isinstance(c, float) and header in ("padding",):
                cells.append(fmt(c, 3))
            elif isinstance(c, float) and (header.endswith("cores") or header == "mean batch"):
                cells.append(fmt(c, 2))
            else:
                cells.append(c if isinstance(c, str) else fmt(c))  # type: ignore[arg-type]
        out.append(cells)
    return out


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Each target of the performance issue: the measured figure and whether it holds."""
    s = results["summary"]
    device = results["meta"]["device"]
    out: list[list[str]] = []

    def add(name: str, measured: str, goal: str, ok: bool | None) -> None:
        out.append([name, measured, goal, "-" if ok is None else ("yes" if ok else "NO")])

    r = s.get("served_over_ceiling")
    if device == "cpu":
        add(
            "served REST @32 ÷ offline ceiling (model only; median of the rounds' ratios)",
            times(r),
            ">= 0.85x",
            None if r is None else r >= 0.85,
        )
        rm = s.get("served_over_ceiling_of_medians")
        add("served REST @32 ÷ offline ceiling (ratio of the medians)", times(rm), "(same)", None)
        rc = s.get("served_over_ceiling_cpu")
        add(
            "served ÷ offline per CPU-second x cores left by the client (noise-robust estimate)",
            times(rc),
            "(same)",
            None,
        )
        rt = s.get("served_over_ceiling_tokenized")
        add("served REST @32 ÷ offline ceiling (with tokenization)", times(rt), "(same, looser)", None)
        g = s.get("grpc_over_rest")
        # Typed gRPC and REST are compared, not ranked: their load generators differ (a Python
        # client against wrk on the same cores), which the per-CPU-second figure takes out.
        add("gRPC ÷ REST @32 (median of the rounds' ratios)", times(g), "(info: clients differ)", None)
        gc = s.get("grpc_over_rest_cpu")
        if gc is not None:
            add("gRPC ÷ REST @32 per server CPU-second", times(gc), "(the comparison)", None)
        gs = s.get("grpc_stream_over_rest")
        if gs is not None:
            add("gRPC stream ÷ REST @32 (median of rounds)", times(gs), "(info: one bidirectional Stream)", None)
        gsc = s.get("grpc_stream_over_rest_cpu")
        if gsc is not None:
            add("gRPC stream ÷ REST @32 per server CPU-second", times(gsc), "(info)", None)
        gv = s.get("v2_grpc_over_http")
        if gv is not None:
            add("KServe v2 gRPC ÷ v2 HTTP @32 (the same C++ client, perf_analyzer)", times(gv), ">= 1.0x", gv >= 1.0)
        p99, bound, strict = s.get("p99_half_saturation_s"), s.get("p99_bound_s"), s.get("p99_bound_mean_s")
        add(
            "p99 at half saturation",
            f"{fmt(ms(p99))} ms" if p99 else "-",
            f"<= {fmt(ms(bound))} ms: 2 x (max queue delay + p99 batch compute)" if bound else "-",
            None if p99 is None or bound is None else p99 <= bound,
        )
        add(
            "p99 at half saturation (stricter reading)",
            f"{fmt(ms(p99))} ms" if p99 else "-",
            f"<= {fmt(ms(strict))} ms: 2 x (max queue delay + mean batch compute)" if strict else "-",
            None if p99 is None or strict is None else p99 <= strict,
        )
        pad = s.get("padding_ratio_32")
        add("padding ratio (REST @32)", fmt(pad, 3), "<= 0.15", None if pad is None else pad <= 0.15)
        n = s.get("ours_over_naive")
        rounds = s.get("versus_rounds")
        side_by_side = f"median of {rounds} side-by-side rounds" if rounds else "one run each"
        # The 5x goal was retired: the offline ceiling itself is ~4-5x the naive server on a CPU.
        add(f"ours fp32 @32 ÷ naive fp32 ({side_by_side})", times(n), "(info)", None)
        n8 = s.get("int8_over_naive")
        if n8 is not None:
            agreement = s.get("int8_top1_agreement")
            add(
                "ours int8 @32 ÷ naive fp32 (int8 on request"
                + (f"; top-1 agreement {agreement:.1%} at export" if agreement is not None else "")
                + ")",
                times(n8),
                ">= 5x",
                n8 >= 5,
            )
        if "ours_over_best_peer_32" in s:
            peers_line(results, add)
        rss = s.get("server_rss_mb")
        add(
            f"server RSS ({s.get('models_loaded', '?')} models)",
            f"{fmt(rss)} MB" if rss else "-",
            "< 400 MB",
            None if rss is None else rss < 400,
        )
    else:
        best = s.get("best_served_seqs_per_s")
        add("served seq/s (best protocol)", fmt(best), ">= 7,500", None if best is None else best >= 7500)
        add("served ÷ offline", times(r), ">= 0.90x", None if r is None else r >= 0.90)
        p99 = s.get("p99_70_saturation_s")
        add(
            "p99 at 70% saturation",
            f"{fmt(ms(p99))} ms" if p99 else "-",
            "<= 50 ms",
            None if p99 is None else p99 <= 0.05,
        )
        add("GPU memory used", s.get("gpu_memory", "-"), "reported", None)
    return out


def peers_line(results: dict[str, Any], add: Any) -> None:
    """The peers target: ours fp32 REST @32 ÷ the best peer @32, rounds side by side."""
    s = results["summary"]
    value = s.get("ours_over_best_peer_32")
    peers = results.get("peers") or {}
    best = peers.get("best_32") or {}
    servers = peers.get("servers") or {}
    name = s.get("best_peer_32")
    title = (servers.get(name) or {}).get("title", name) if name else None
    rounds = len(best.get("rounds") or [])
    detail = f"best: {title}; median of {rounds} side-by-side rounds" if title else "no peer measured"
    add(f"ours fp32 REST @32 ÷ best peer @32 ({detail})", times(value), ">= 2x", None if value is None else value >= 2)
    per_cpu = s.get("ours_over_best_peer_32_cpu")
    if per_cpu is not None:
        add("ours ÷ best peer @32 per server CPU-second (noise-robust estimate)", times(per_cpu), "(info)", None)


def peers_section(peers: dict[str, Any]) -> list[str]:
    """## Peers: who ran with what, the figures per client count, ours ÷ each."""
    if peers.get("skipped"):
        return ["## Peers", "", f"Not measured: {peers['skipped']}.", ""]
    servers = peers.get("servers") or {}
    status_rows, configured = [], []
    for name, st in servers.items():
        settings = st.get("settings") or {}
        agreement = st.get("agreement")
        if settings:
            configured.append(f"- {st.get('title', name)}: " + "; ".join(f"{k} {v}" for k, v in settings.items()))
        status_rows.append(
            [
                st.get("title", name),
                st.get("version", "-"),
                "yes" if st.get("available") else f"NO: {st.get('reason', 'unknown')}",
                f"{agreement['same_label']}/{agreement['texts']} same label, score within"
                f" {agreement['max_score_difference']:.1e}"
                if agreement
                else "-",
                fmt(st.get("rss_mb")),
                str(st.get("processes", "-")),
                fmt(st.get("idle_cores"), 2),
            ]
        )
    rows = []
    for r in peers.get("table") or []:
        rows.append(
            [
                (servers.get(r["server"]) or {}).get("title", r["server"]),
                str(r["clients"]),
                fmt(r["seqs_per_s"]),
                fmt(ms(r["p50_s"])),
                fmt(ms(r["p99_s"])),
                str(r["errors"]),
                fmt(r.get("server_cores"), 2),
                fmt(r.get("per_cpu_s")),
                fmt(r.get("client_cores"), 2),
                fmt(r.get("other_cores"), 2),
                fmt(r.get("idle_servers_cores"), 2),
                "-" if r["server"] == "ours" else times(r.get("ours_over")),
                "-" if r["server"] == "ours" else times(r.get("ours_over_cpu")),
            ]
        )
    best = peers.get("best_32") or {}
    best_cpu = peers.get("best_32_cpu") or {}
    parts = [
        "## Peers",
        "",
        "The servers people would pick instead, each in its own venv, on the same model (the demo"
        " classifier's fp32 graph; infinity the same graph in a Hugging Face layout), the same texts and"
        f" the same load generator. {peers.get('method', '')}. seq/s is the median over the rounds;"
        " latency, errors and CPU are the median round's; server cores count the server's whole process"
        " tree and seq/CPU-s is the throughput per CPU-second of it (median over the rounds); ours ÷"
        " server is the median of the rounds' own ratios. Idle cores: each server's CPU with no load"
        " (all up), which it takes from whichever server is being measured; of which idle servers: the"
        " part of other cores the servers not under load took meanwhile.",
        "",
        markdown_table(
            ["server", "version", "available", "answers vs ours", "RSS MB (process tree)", "processes", "idle cores"],
            status_rows,
        ),
        "",
        *configured,
        "",
    ]
    if rows:
        parts += [
            markdown_table(
                [
                    "server",
                    "clients",
                    "seq/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "server cores",
                    "seq/CPU-s",
                    "client cores",
                    "other cores",
                    "of which idle servers",
                    "ours ÷ server",
                    "ours ÷ server per CPU-s",
                ],
                rows,
            ),
            "",
        ]
    if best.get("rounds"):
        parts += [
            f"Ours ÷ the best peer of each round @32: {', '.join(times(x) for x in best['rounds'])};"
            f" median **{times(best.get('ratio'))}** (goal >= 2x).",
            "",
        ]
    if best_cpu.get("rounds"):
        parts += [
            "Per server CPU-second (sequences per CPU-second of each server's process tree, robust to other"
            " processes taking cores on a shared host), ours ÷ the best peer of each round @32:"
            f" {', '.join(times(x) for x in best_cpu['rounds'])}; median {times(best_cpu.get('ratio'))}.",
            "",
        ]
    return parts


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    s = results["summary"]
    parts = [
        f"# electra-serve benchmark ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"- command: `{meta['command']}`",
        f"- when: {meta['started']}; host: {meta['host']}",
        f"- device: {meta['device']} ({meta.get('providers', '-')}); model: `{meta['model']}` ({meta['precision']}),"
        f" shape {meta['shape']}",
        f"- inputs: {meta['dataset']}",
        f"- server flags: `{meta['server_args'] or '(defaults)'}`; pinning: {meta['pinning']}",
        f"- load generators: {meta['clients']}",
        f"- background load on this shared host (cores busy outside the server and the client,"
        f" median over runs): {fmt(s.get('other_cores_median'), 2)}",
        "- throughput is successful sequences per second (one sequence per request unless stated);"
        " latency is end to end at the client.",
        "",
        "## Targets",
        "",
        markdown_table(["target", "measured", "goal", "met"], targets(results)),
        "",
    ]
    if s.get("ab_ratio") is not None:
        parts += [
            f"A/B: this checkout ÷ the server from `{s['ab_root']}` at REST @32, medians of the same rounds:"
            f" {fmt(s.get('served_32'))} ÷ {fmt(s.get('ab_served_32'))} = **{times(s['ab_ratio'])}**",
            "",
        ]
    if results.get("rounds"):
        rounds = results["rounds"]
        ab = any("served_ab" in r for r in rounds)
        typed = any("grpc" in r for r in rounds)
        streamed = any("grpc_stream" in r for r in rounds)
        headers = [
            "round",
            "offline seq/s",
            "offline + tokenize seq/s",
            "REST @32 seq/s",
            "ratio",
            "offline seq/CPU-s",
            "served seq/CPU-s",
            "padding",
        ]
        headers += ["gRPC @32 seq/s", "gRPC seq/CPU-s"] if typed else []
        headers += ["gRPC stream @32 seq/s"] if streamed else []
        headers += ["A/B baseline REST @32", "A/B padding"] if ab else []
        headers += ["other cores"]
        table = []
        for i, r in enumerate(rounds):
            row = [
                str(i + 1),
                fmt(r["offline"]),
                fmt(r["offline_tok"]),
                fmt(r["served"]),
                times(ratio(r["served"], r["offline"])),
                fmt(r.get("offline_per_cpu_s")),
                fmt(r.get("served_per_cpu_s")),
                fmt(r.get("padding"), 3),
            ]
            row += [fmt(r.get("grpc")), fmt(r.get("grpc_per_cpu_s"))] if typed else []
            row += [fmt(r.get("grpc_stream"))] if streamed else []
            row += [fmt(r.get("served_ab")), fmt(r.get("padding_ab"), 3)] if ab else []
            table.append([*row, fmt(r.get("other_cores"), 2)])
        last = [
            "median",
            fmt(s.get("ceiling")),
            fmt(s.get("ceiling_tokenized")),
            fmt(s.get("served_32")),
            times(s.get("served_over_ceiling")),
            "-",
            "-",
            "-",
        ]
        last += [fmt(median([r["grpc"] for r in rounds if "grpc" in r])), "-"] if typed else []
        last += [fmt(median([r["grpc_stream"] for r in rounds if "grpc_stream" in r]))] if streamed else []
        last += [fmt(s.get("ab_served_32")), "-"] if ab else []
        table.append([*last, fmt(s.get("other_cores_rounds"), 2)])
        parts += [
            "## Served vs offline ceiling, side by side",
            "",
            "Each round measures the offline ceiling (the best, in that round, of the sweep's top three: "
            f"{', '.join(results['offline'].get('contenders', [results['offline']['best']['label']]))}), "
            "the best again with tokenization, then REST (and gRPC: unary calls, then one Stream) at 32 clients; "
            "the target uses the median of the rounds' ratios (neighbours in time on a noisy host).",
            "",
            markdown_table(headers, table),
            "",
        ]
    if results.get("closed"):
        parts += ["## Closed loop", "", markdown_table(LOAD_HEADERS, _cells(load_rows(results["closed"]))), ""]
    if results.get("open"):
        parts += [
            "## Open loop (Poisson arrivals)",
            "",
            f"Rates are fractions of the saturation throughput ({fmt(s.get('saturation'))} req/s, the best"
            " closed-loop REST figure). Latency counts from each request's scheduled time.",
            "",
            markdown_table(
                [*LOAD_HEADERS, "client lag p99 ms", "batch compute ms"],
                [
                    [*cells, fmt(ms(r.get("extra", {}).get("lag_p99_s"))), fmt(ms(r.get("batch_compute_s")), 2)]
                    for cells, r in zip(_cells(load_rows(results["open"])), results["open"], strict=True)
                ],
            ),
            "",
        ]
    off = results.get("offline")
    if off and off.get("sweep"):
        parts += [
            "## Offline sweep (no server, the server's runtime class, model only)",
            "",
            markdown_table(
                ["configuration", "seq/s", "padding"],
                [[r["label"], fmt(r["seqs_per_s"]), fmt(r["padding_ratio"], 3)] for r in off["sweep"]],
            ),
            "",
        ]
    qa = results.get("qa")
    if qa:
        parts += [
            "## Long-context QA set",
            "",
            qa["description"],
            "",
            markdown_table(
                ["what", "questions/s", "windows/s", "windows/CPU-s", "p50 ms", "p99 ms", "mean batch", "padding"],
                [
                    [
                        row["what"],
                        fmt(row.get("questions_per_s")),
                        fmt(row.get("windows_per_s")),
                        fmt(row.get("windows_per_cpu_s"), 2),
                        fmt(ms(row.get("p50_s"))),
                        fmt(ms(row.get("p99_s"))),
                        fmt(row.get("mean_batch_size"), 2),
                        fmt(row.get("padding"), 3),
                    ]
                    for row in qa["rows"]
                ],
            ),
            "",
        ]
    if results.get("int8"):
        parts += [
            "## int8 variant (REST @32, the same model quantized by the export)",
            "",
            markdown_table(LOAD_HEADERS, _cells(load_rows([results["int8"]]))),
            "",
        ]
    if results.get("naive"):
        parts += [
            "## Naive baseline",
            "",
            "`transformers` pipeline (PyTorch) behind a plain FastAPI endpoint, one request at a time"
            " (loadtests/naive_server.py), same model weights, same request bodies. The naive server and"
            " ours (fp32, and int8 on CPU) run at once and are loaded in turn, round after round; each"
            " round's ratio is ours @32 over the naive server's best figure in that round. The load table"
            " is the median round.",
            "",
        ]
        versus = results.get("versus") or []
        if versus:
            concurrencies = sorted({int(c) for r in versus for c in r["naive"]})
            headers = [
                "round",
                *[f"naive @{c} seq/s" for c in concurrencies],
                "ours @32 seq/s",
                "ours ÷ naive",
                "int8 @32 seq/s",
                "int8 ÷ naive",
            ]
            rows = []
            for r in versus:
                naive = {int(c): v for c, v in r["naive"].items()}
                rows.append(
                    [
                        str(r["round"]),
                        *[fmt(naive[c]["seqs_per_s"]) if c in naive else "-" for c in concurrencies],
                        fmt(r["ours"]["seqs_per_s"]),
                        times(r.get("ours_over_naive")),
                        fmt(r["int8"]["seqs_per_s"]) if r.get("int8") else "-",
                        times(r.get("int8_over_naive")),
                    ]
                )
            parts += [markdown_table(headers, rows), ""]
        parts += [markdown_table(LOAD_HEADERS, _cells(load_rows(results["naive"]))), ""]
    if results.get("peers"):
        parts += peers_section(results["peers"])
    memory = results.get("memory")
    if memory:
        parts += [
            "## Memory",
            "",
            markdown_table(["what", "value"], [[k, str(v)] for k, v in memory.items()]),
            "",
        ]
    if results.get("notes"):
        parts += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(parts)


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """throughput_vs_concurrency.png and latency_vs_load.png; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    closed = results.get("closed") or []
    if closed:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for protocol in dict.fromkeys(r["protocol"] for r in closed):
            points = sorted((r["concurrency"], r["seqs_per_s"]) for r in closed if r["protocol"] == protocol)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=PROTOCOL_NAMES.get(protocol))
        for r in results.get("naive") or []:
            ax.scatter([r["concurrency"]], [r["seqs_per_s"]], marker="x", color="black")
        naive = results["summary"].get("naive_seqs_per_s")
        if naive:
            ax.axhline(naive, color="black", linestyle=":", label="naive baseline")
        ceiling = results["summary"].get("ceiling")
        if ceiling:
            ax.axhline(ceiling, color="grey", linestyle="--", label="offline ceiling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("sequences / s")
        ax.set_title("Throughput against concurrency")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / "throughput_vs_concurrency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    opened = results.get("open") or []
    if opened:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for protocol in dict.fromkeys(r["protocol"] for r in opened):
            rows = sorted((r for r in opened if r["protocol"] == protocol), key=lambda r: r["offered_rate"])
            x = [r["offered_rate"] for r in rows]
            name = PROTOCOL_NAMES.get(protocol)
            ax.plot(x, [r["latency"]["p50_s"] * 1000 for r in rows], marker="o", label=f"{name} p50")
            ax.plot(x, [r["latency"]["p99_s"] * 1000 for r in rows], marker="^", label=f"{name} p99")
        ax.set_xlabel("offered load (requests / s, Poisson)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title("Latency against load")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / "latency_vs_load.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    peers_plot = plot_peers(results.get("peers") or {}, out_dir, plt)
    if peers_plot:
        written.append(peers_plot)
    return written


def plot_peers(peers: dict[str, Any], out_dir: Path, plt: Any) -> Path | None:
    """peers_throughput_vs_clients.png: seq/s against clients, one line per server, ours included."""
    table = peers.get("table") or []
    if not table:
        return None
    servers = peers.get("servers") or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for server, points in figures.series(table).items():
        title = (servers.get(server) or {}).get("title", server)
        style = {"linewidth": 2.5, "color": "black"} if server == figures.OURS else {}
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=title, **style)
    ax.set_xscale("log", base=2)
    clients = sorted({int(r["clients"]) for r in table})
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("sequences / s (median of the rounds)")
    ax.set_title("Throughput against clients: ours and the peers (same model, inputs, load generator)")
    ax.title.set_fontsize(9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path = out_dir / "peers_throughput_vs_clients.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def other_cores_median(loads: Sequence[dict[str, Any]]) -> float | None:
    values = [r["cpu"]["other_cores"] for r in loads if r.get("cpu")]
    return median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m loadtests.report RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    results = json.loads(path.read_text())
    print(render(results))
    plot(results, path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
