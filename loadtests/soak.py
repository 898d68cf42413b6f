"""Soak test: mixed traffic on every protocol for a set time, the server's process tree sampled
meanwhile; fails on any unexpected answer, or when RSS, open file descriptors or threads grow
after the warm-up.

    python -m loadtests.soak                                            # its own server, demo models, 600 s
    python -m loadtests.soak --duration-s 240 --warmup-s 60
    python -m loadtests.soak --duration-s 120 --warmup-s 30 --server-arg=--workers=2 --name soak-workers2
    python -m loadtests.soak --model-repository DIR                     # its own server on other models
    python -m loadtests.soak --url http://127.0.0.1:8000 --grpc 127.0.0.1:8001 --pid PID   # a running one

Not in CI: it takes minutes (`--duration-s`), and is bounded by it (every request has a timeout,
in-flight work gets at most `--request-timeout-s` after the end, then the server it started is
stopped with SIGTERM and must exit 0).

Traffic: `--concurrency` clients in a closed loop, all on 127.0.0.1, each drawing its next request
from MIX: the task routes `/v1/{classify,qa,tag,discriminate}`, the Hugging Face route
`/models/{name}`, KServe v2 `/v2/models/{name}/infer`, the typed gRPC API (unary, and the
bidirectional `Stream` with 1-6 messages a call, some of them malformed), KServe v2 gRPC
`ModelInfer`, probes (`/health/ready`, `/metrics`, `/v1/models`); a share of malformed requests
(bad JSON, missing or mistyped fields, unknown models, bad tensors, too many inputs, a 1-4 MB text
far past the window budget: each must be a 4xx or a gRPC INVALID_ARGUMENT / NOT_FOUND /
RESOURCE_EXHAUSTED), requests with a 1 ms deadline
(504 / DEADLINE_EXCEEDED, or an answer), client disconnects and cancels (requests cancelled in
flight, sockets closed mid-body or before the answer, streams cancelled) and fresh connections
(HTTP `Connection: close`, a new gRPC channel per call). Every answer is counted by protocol and
status and classified (`classify_outcome`); a 5xx, a gRPC INTERNAL / UNKNOWN / UNAVAILABLE, a
transport error, a timeout, a stream that leaves a message unanswered, or a 2xx to a malformed
request is an error. 429 / RESOURCE_EXHAUSTED to a valid request is backpressure ("shed"),
counted, not an error.

Samples, every `--sample-every-s`: RSS, open file descriptors (/proc/PID/fd) and threads of the
server and all its descendants (the model owner and its API workers with `--workers N`).
Verdict (`summarise`, `judge`): the median of the first window after the warm-up against the
median of the last window (each `--window-s`, by default a fifth of the time after the warm-up);
RSS fails when it grows by more than `--max-growth` (5%), file descriptors and threads when they
grow by more than `--max-growth` *and* by more than `--fd-slack` / `--thread-slack` (their counts
are small: one more connection is not a leak); the server's set of processes must not change after
the warm-up (a worker that died and was restarted).

Writes RESULTS/NAME.json (conditions, samples, counts, summary, verdict), NAME.md (short tables)
and NAME.png (matplotlib, when installed). Exit 0 when it passes, 1 when it fails, 2 when it could
not run (the server did not start, or serves nothing to load). With `--url` and no `--pid` nothing
is sampled and only the answers are judged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from loadtests import data, procstat
from loadtests.servers import HOST, ServerProcess, electra_server, offered_protocols_at

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024
HOSTILE_TEXT = "a " * (2 * MB)  # 4 MB, one token every two bytes

# ---------------------------------------------------------------- outcomes (pure)

OK_STATUSES = frozenset({"200", "OK"})
# What a malformed request may get: HTTP 4xx, or the gRPC codes the server maps them to
# (server/core/errors.py: 400 / 415 / 422 INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED).
REJECTED_STATUSES = frozenset(
    {"400", "404", "413", "415", "422", "INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED"}
)
SHED_STATUSES = frozenset({"429", "RESOURCE_EXHAUSTED"})  # backpressure
DEADLINE_STATUSES = frozenset({"504", "DEADLINE_EXCEEDED"})
# "cancelled": the client cancelled the request; "disconnected": it closed its socket.
CANCELLED_STATUSES = frozenset({"cancelled", "disconnected", "CANCELLED", "499"})
EXPECTS = ("ok", "reject", "deadline", "cancel")
CATEGORIES = ("ok", "rejected", "shed", "deadline", "cancelled", "error")


def classify_outcome(expect: str, status: str) -> str:
    """One answer's category for what the request expected.

    expect: "ok" (a valid request), "reject" (malformed: a 4xx or its gRPC code is right),
    "deadline" (sent with a deadline too short to meet), "cancel" (the client cancels it or hangs up).
    status: the HTTP status ("200"), the gRPC code name ("OK"), or what the client saw instead:
    "cancelled", "disconnected", "timeout", "transport:<exception>", "missing-response".
    Returns one of CATEGORIES; "error" is anything the server should never do.
    """
    if expect not in EXPECTS:
        raise ValueError(f"unknown expectation {expect!r}")
    if status in OK_STATUSES:
        return "error" if expect == "reject" else "ok"  # a 2xx to a malformed request is a bug
    if expect == "reject" and status in REJECTED_STATUSES:
        return "rejected"
    if status in SHED_STATUSES:
        return "shed"
    if expect == "deadline" and status in DEADLINE_STATUSES:
        return "deadline"
    if expect == "cancel" and status in CANCELLED_STATUSES:
        return "cancelled"
    return "error"


@dataclass
class Tally:
    """Answers counted by protocol and status, by protocol and category, and by operation."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    categories: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    operations: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    error_examples: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    errors: int = 0
    max_examples: int = 40

    def add(self, protocol: str, operation: str, expect: str, status: str, detail: str = "", at_s: float = 0.0) -> str:
        category = classify_outcome(expect, status)
        self.statuses[protocol][status] += 1
        self.categories[protocol][category] += 1
        self.operations[operation][category] += 1
        self.total += 1
        if category == "error":
            self.errors += 1
            if len(self.error_examples) < self.max_examples:
                self.error_examples.append(
                    {
                        "t_s": round(at_s, 3),
                        "protocol": protocol,
                        "operation": operation,
                        "expect": expect,
                        "status": status,
                        "detail": detail[:300],
                    }
                )
        return category

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "errors": self.errors,
            "by_protocol_status": {p: dict(sorted(c.items())) for p, c in sorted(self.statuses.items())},
            "by_protocol_category": {p: dict(sorted(c.items())) for p, c in sorted(self.categories.items())},
            "by_operation_category": {o: dict(sorted(c.items())) for o, c in sorted(self.operations.items())},
            "error_examples": self.error_examples,
        }


# ---------------------------------------------------------------- samples and verdict (pure)

METRICS = ("rss_bytes", "fds", "threads")


def make_sample(
    t_s: float, usage: Sequence[procstat.ProcessUsage], requests: int = 0, errors: int = 0
) -> dict[str, Any]:
    """One sample of the process tree: totals, and each process's own figures."""
    return {
        "t_s": round(t_s, 3),
        "rss_bytes": sum(u.rss_bytes for u in usage),
        "fds": sum(u.fds for u in usage),
        "threads": sum(u.threads for u in usage),
        "processes": len(usage),
        "by_pid": {str(u.pid): {"rss_bytes": u.rss_bytes, "fds": u.fds, "threads": u.threads} for u in usage},
        "requests": requests,
        "errors": errors,
    }


def growth(first: float, last: float) -> float:
    """Relative growth from first to last (0.05 is 5%); inf when something grew from 0."""
    if first == 0:
        return 0.0 if last == 0 else math.inf
    return (last - first) / first


def summarise(samples: Sequence[dict[str, Any]], warmup_s: float, window_s: float | None = None) -> dict[str, Any]:
    """The first and the last window after the warm-up, and each metric's median in both.

    window_s: each window's length (default: a fifth of the time sampled after the warm-up), at
    most half of it so that the two never overlap. `ok` is False, with a `reason`, when fewer than
    two samples were taken after the warm-up."""
    post = [s for s in samples if s["t_s"] >= warmup_s and s.get("processes", 1) > 0]
    if len(post) < 2:
        return {"ok": False, "reason": f"{len(post)} sample(s) after the {warmup_s:g} s warm-up; need 2 or more"}
    start, end = post[0]["t_s"], post[-1]["t_s"]
    span = end - start
    window = window_s if window_s else span / 5
    window = min(window, span / 2)
    first = [s for s in post if s["t_s"] <= start + window] or post[:1]
    last = [s for s in post if s["t_s"] >= end - window] or post[-1:]
    if first[-1] is last[0]:  # one sample in common (very few samples): keep the windows apart
        first, last = first[:-1] or post[:1], last[1:] or post[-1:]
    metrics = {}
    for name in METRICS:
        a = statistics.median(s[name] for s in first)
        b = statistics.median(s[name] for s in last)
        values = [s[name] for s in post]
        metrics[name] = {"first": a, "last": b, "growth": growth(a, b), "growth_abs": b - a,
                         "min": min(values), "max": max(values)}  # fmt: skip
    pid_sets = [sorted(s["by_pid"]) for s in post if "by_pid" in s]
    return {
        "ok": True,
        "warmup_s": warmup_s,
        "window_s": window,
        "first_window": [first[0]["t_s"], first[-1]["t_s"], len(first)],
        "last_window": [last[0]["t_s"], last[-1]["t_s"], len(last)],
        "samples_after_warmup": len(post),
        "metrics": metrics,
        "process_sets": [list(p) for p in dict.fromkeys(tuple(p) for p in pid_sets)],
    }


@dataclass(frozen=True)
class Limits:
    max_growth: float = 0.05
    fd_slack: int = 10  # fds may also grow by this many before the relative limit applies
    thread_slack: int = 4


def judge(summary: dict[str, Any] | None, tally: Tally | None, limits: Limits) -> dict[str, Any]:
    """The verdict: `passed`, and one `reasons` line per failure. summary None: nothing sampled
    (a server given by --url without --pid), so only the answers are judged."""
    reasons: list[str] = []
    if tally is not None:
        if tally.errors:
            unexpected = Counter()
            for protocol, categories in tally.categories.items():
                if categories.get("error"):
                    unexpected[protocol] = categories["error"]
            detail = ", ".join(f"{p} {n}" for p, n in sorted(unexpected.items()))
            reasons.append(f"{tally.errors} unexpected answer(s) of {tally.total} ({detail})")
        if tally.total == 0:
            reasons.append("no request was answered")
    checks: dict[str, Any] = {}
    if summary is not None:
        if not summary.get("ok"):
            reasons.append(summary.get("reason", "too few samples"))
        else:
            slack = {"rss_bytes": 0, "fds": limits.fd_slack, "threads": limits.thread_slack}
            for name, m in summary["metrics"].items():
                grew = m["growth"] > limits.max_growth and m["growth_abs"] > slack[name]
                checks[name] = {"growth": m["growth"], "growth_abs": m["growth_abs"], "limit": limits.max_growth,
                                "slack": slack[name], "passed": not grew}  # fmt: skip
                if grew:
                    reasons.append(
                        f"{name} grew {m['growth'] * 100:+.1f}% ({_amount(name, m['first'])} -> "
                        f"{_amount(name, m['last'])}) after the warm-up; limit {limits.max_growth * 100:g}%"
                        + (f" and {slack[name]}" if slack[name] else "")
                    )
            if len(summary["process_sets"]) > 1:
                reasons.append(f"the server's processes changed after the warm-up: {summary['process_sets']}")
    return {"passed": not reasons, "reasons": reasons, "checks": checks}


def _amount(name: str, value: float) -> str:
    return f"{value / MB:.1f} MB" if name == "rss_bytes" else f"{value:g}"


# ---------------------------------------------------------------- traffic

SERVICE = "electra.v1.ElectraService"
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
TASK_WEIGHTS = {"classify": 50, "tag": 20, "discriminate": 20, "qa": 10}  # locustfile.py's mix
V2_INPUTS = {"classify": ("TEXT",), "tag": ("TEXT",), "discriminate": ("TEXT",), "qa": ("QUESTION", "CONTEXT")}


@dataclass(frozen=True)
class Op:
    name: str
    protocol: str  # what its answers are counted under
    expect: str  # see classify_outcome
    weight: float
    needs: str  # the protocol the server must offer: rest | v2-http | grpc | v2-grpc


# The mix: ~83% valid requests, ~10% malformed (and some malformed Stream messages), ~4% cancels
# and disconnects, ~1% deadlines, ~2% probes.
MIX: tuple[Op, ...] = (
    Op("rest", "rest", "ok", 26, "rest"),
    Op("rest-fresh-connection", "rest", "ok", 2, "rest"),
    Op("hf", "hf", "ok", 5, "rest"),
    Op("v2-http", "v2-http", "ok", 10, "v2-http"),
    Op("grpc", "grpc", "ok", 19, "grpc"),
    Op("grpc-fresh-channel", "grpc", "ok", 1, "grpc"),
    Op("grpc-stream", "grpc-stream", "ok", 10, "grpc"),
    Op("v2-grpc", "v2-grpc", "ok", 10, "v2-grpc"),
    Op("probe", "http-probe", "ok", 2, "rest"),
    Op("rest-malformed", "rest", "reject", 4, "rest"),
    Op("hf-malformed", "hf", "reject", 1, "rest"),
    Op("v2-http-malformed", "v2-http", "reject", 2, "v2-http"),
    Op("grpc-malformed", "grpc", "reject", 2, "grpc"),
    Op("v2-grpc-malformed", "v2-grpc", "reject", 1, "v2-grpc"),
    Op("rest-cancel", "rest", "cancel", 1.5, "rest"),
    Op("http-disconnect", "http-raw", "cancel", 1, "rest"),
    Op("grpc-cancel", "grpc", "cancel", 1, "grpc"),
    Op("grpc-stream-cancel", "grpc-stream", "cancel", 0.5, "grpc"),
    Op("rest-deadline", "rest", "deadline", 0.5, "rest"),
    Op("grpc-deadline", "grpc", "deadline", 0.5, "grpc"),
    # A text of 1-4 MB far past the window budget (loadtests/hostile.py): refused at the budget's
    # cost (413 / 422 for classify / RESOURCE_EXHAUSTED, or 429 past the body buffer).
    Op("rest-hostile", "rest", "reject", 0.3, "rest"),
    Op("grpc-hostile", "grpc", "reject", 0.2, "grpc"),
)


def usable_mix(protocols: dict[str, bool], mix: Sequence[Op] = MIX) -> list[Op]:
    return [op for op in mix if protocols.get(op.needs)]


@dataclass
class Target:
    url: str  # http://127.0.0.1:PORT
    grpc: str | None  # 127.0.0.1:PORT
    protocols: dict[str, bool]
    models: dict[str, str]  # task -> model name
    max_seq_len: dict[str, int] = field(default_factory=dict)  # task -> its model's longest row

    @property
    def http_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or HOST, parts.port or 80


def served_models(url: str, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """task -> the first ready model of that task (`GET /v1/models`: name, max_seq_len, ...)."""
    listed = httpx.get(url + "/v1/models", timeout=timeout_s).json()["models"]
    out: dict[str, dict[str, Any]] = {}
    for m in listed:
        if m.get("ready", True):
            out.setdefault(m["task"], m)
    return out


def text_limits(max_seq_len: dict[str, int], longest: int = 128) -> tuple[int, int]:
    """(longest single text, longest text of a pair), in tokens with [CLS] / [SEP]: classify
    answers a text longer than its model with a 422 (tag and discriminate split it into windows;
    the limit is applied to all three alike), and a pair costs len(a) + len(b) - 1."""
    model = min((n for task, n in max_seq_len.items() if task != "qa"), default=longest)
    single = max(3, min(longest, model))
    return single, max(3, min(single, (model + 1) // 2))


def make_inputs(
    tokenizer: Any, max_seq_len: dict[str, int], seed: int
) -> tuple[list[str], list[str], list[data.QaPair]]:
    """(texts, texts short enough to pair, QA pairs): the bench's generated sets (loadtests/data.py),
    sized for the served models; QA contexts of 40-500 tokens (split into windows by the server)."""
    single, pair = text_limits(max_seq_len)
    texts = data.mixed_texts(tokenizer, 400, seed=seed + 7, low=min(8, single), high=single)
    lengths = data.token_lengths(tokenizer, texts)
    pairable = [t for t, n in zip(texts, lengths, strict=True) if n <= pair]
    if len(pairable) < 20:
        pairable = data.mixed_texts(tokenizer, 50, seed=seed + 9, low=min(8, pair), high=pair)
    qa = data.qa_pairs(tokenizer, 24, seed=seed + 11, context_tokens=(40, 500))
    return texts, pairable, qa


def tokenizer_for(repository: Path | None, models: Sequence[str]) -> Any:
    """The served models' own tokenizer when their repository is at hand, else the ELECTRA one."""
    from tokenizers import Tokenizer

    for name in models if repository is not None else ():
        found = sorted(Path(repository, name).glob("**/tokenizer.json"))  # flat or versioned layout
        if found:
            return Tokenizer.from_file(str(found[-1]))
    return data.bert_tokenizer()


class Traffic:
    """The clients' requests: each operation returns [(protocol, expect, status, detail)]."""

    def __init__(
        self, target: Target, texts: list[str], pairable: list[str], qa: list[data.QaPair], timeout_s: float
    ) -> None:
        self.target = target
        self.texts = texts
        self.pairable = pairable
        self.qa = qa
        self.timeout_s = timeout_s
        self.tasks = [t for t in TASK_WEIGHTS if t in target.models]
        self.task_weights = [TASK_WEIGHTS[t] for t in self.tasks]
        self.session: Any = None
        self.channels: list[Any] = []
        self._methods: dict[tuple[int, str], Any] = {}

    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        if self.target.grpc:
            self.channels = [_channel(self.target.grpc, k) for k in range(2)]

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        for channel in self.channels:
            await channel.close()

    # -------------------------------------------------------- inputs

    def _text(self, rng: random.Random) -> str:
        return rng.choice(self.texts)

    def _task(self, rng: random.Random) -> str:
        return rng.choices(self.tasks, self.task_weights)[0]

    def rest_body(self, task: str, rng: random.Random) -> dict[str, Any]:
        """A valid `{"model", "inputs", "parameters"?}` body, as the pipelines take them."""
        text = self._text
        body: dict[str, Any] = {"model": self.target.models[task]}
        if task == "qa":
            pair = rng.choice(self.qa)
            body["inputs"] = {"question": pair.question, "context": pair.context}
            if rng.random() < 0.3:
                body["parameters"] = {"handle_impossible_answer": True, "top_k": rng.randint(1, 3)}
        elif task == "classify":
            pair = self.pairable
            one = (
                (lambda: {"text": rng.choice(pair), "text_pair": rng.choice(pair)})
                if rng.random() < 0.15
                else (lambda: text(rng))
            )
            body["inputs"] = one() if rng.random() < 0.8 else [one() for _ in range(rng.randint(2, 4))]
            if rng.random() < 0.2:
                body["parameters"] = {"function_to_apply": rng.choice(["softmax", "sigmoid", "none"])}
        elif task == "tag":
            body["inputs"] = text(rng)
            if rng.random() < 0.5:
                body["parameters"] = {"aggregation_strategy": rng.choice(["none", "simple", "first", "average", "max"])}
        else:
            body["inputs"] = [text(rng) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.3:
                body["parameters"] = {"threshold": round(rng.uniform(0.1, 0.9), 2)}
        return body

    def v2_body(self, task: str, rng: random.Random) -> dict[str, Any]:
        n = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        if task == "qa":
            pairs = [rng.choice(self.qa) for _ in range(n)]
            columns = {"QUESTION": [p.question for p in pairs], "CONTEXT": [p.context for p in pairs]}
        elif task == "classify" and rng.random() < 0.15:
            columns = {"TEXT": [rng.choice(self.pairable) for _ in range(n)]}
            columns["TEXT_PAIR"] = [rng.choice(self.pairable) for _ in range(n)]
        else:
            columns = {"TEXT": [self._text(rng) for _ in range(n)]}
        return {"inputs": [{"name": k, "datatype": "BYTES", "shape": [n, 1], "data": v} for k, v in columns.items()]}

    def typed(self, task: str, rng: random.Random) -> tuple[str, Any]:
        """(method, typed electra.v1 request)."""
        from loadtests.clients.pyload import grpc_request

        return grpc_request(task, self.rest_body(task, rng))

    def v2_request(self, task: str, rng: random.Random) -> Any:
        from proto.inference import grpc_service_pb2 as kserve

        body = self.v2_body(task, rng)
        request = kserve.ModelInferRequest(model_name=self.target.models[task])
        for tensor in body["inputs"]:
            added = request.inputs.add(name=tensor["name"], datatype="BYTES", shape=tensor["shape"])
            added.contents.bytes_contents.extend(v.encode() for v in tensor["data"])
        return request

    # -------------------------------------------------------- transports

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[str, str]:
        async with self.session.post(
            self.target.url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})}
        ) as response:
            text = await response.read()
            return str(response.status), "" if response.status < 300 else text[:200].decode(errors="replace")

    async def get(self, path: str) -> tuple[str, str]:
        async with self.session.get(self.target.url + path) as response:
            await response.read()
            return str(response.status), ""

    def method(self, channel: Any, path: str) -> Any:
        key = (id(channel), path)
        if key not in self._methods:
            self._methods[key] = channel.unary_unary(
                path, request_serializer=None, response_deserializer=None, _registered_method=True
            )
        return self._methods[key]

    async def unary(self, path: str, payload: bytes, rng: random.Random, timeout_s: float | None = None) -> str:
        call = self.method(rng.choice(self.channels), path)(payload, timeout=timeout_s or self.timeout_s)
        code = await call.code()
        return code.name, "" if code.name == "OK" else (await call.details() or "")

    # -------------------------------------------------------- operations

    async def run(self, op: Op, rng: random.Random) -> list[tuple[str, str, str, str]]:
        name = op.name.replace("-", "_")
        return await getattr(self, f"op_{name}")(op, rng)

    async def op_rest(self, op: Op, rng: random.Random, headers: dict[str, str] | None = None) -> list[Any]:
        task = self._task(rng)
        status, detail = await self.post(f"/v1/{task}", orjson.dumps(self.rest_body(task, rng)), headers)
        return [(op.protocol, op.expect, status, detail)]

    async def op_rest_fresh_connection(self, op: Op, rng: random.Random) -> list[Any]:
        return await self.op_rest(op, rng, {"Connection": "close"})

    async def op_rest_deadline(self, op: Op, rng: random.Random) -> list[Any]:
        return await self.op_rest(op, rng, {"x-request-timeout-ms": "1"})

    async def op_hf(self, op: Op, rng: random.Random) -> list[Any]:
        task = self._task(rng)
        body = self.rest_body(task, rng)
        status, detail = await self.post(f"/models/{body.pop('model')}", orjson.dumps(body))
        return [(op.protocol, op.expect, status, detail)]

    async def op_v2_http(self, op: Op, rng: random.Random) -> list[Any]:
        task = self._task(rng)
        path = f"/v2/models/{self.target.models[task]}/infer"
        status, detail = await self.post(path, orjson.dumps(self.v2_body(task, rng)))
        return [(op.protocol, op.expect, status, detail)]

    async def op_probe(self, op: Op, rng: random.Random) -> list[Any]:
        path = rng.choice(["/health/ready", "/health/live", "/metrics", "/v1/models", "/v2/health/ready"])
        status, _ = await self.get(path)
        return [(op.protocol, op.expect, status, path)]

    async def op_rest_malformed(self, op: Op, rng: random.Random) -> list[Any]:
        task = self._task(rng)
        model = self.target.models[task]
        bodies = [
            b'{"inputs": "unterminated',  # not JSON: 400
            b"{}",  # no inputs: 422
            orjson.dumps({"model": "no-such-model", "inputs": "x"}),  # 404
            orjson.dumps({"model": model, "inputs": 5}),  # wrong type
            orjson.dumps({"model": model, "inputs": ["x"] * 513}),  # too many inputs: 413
            orjson.dumps({"model": model, "inputs": "x", "parameters": {"top_k": "many", "nope": 1}}),
            orjson.dumps([1, 2, 3]),  # not an object
        ]
        status, detail = await self.post(f"/v1/{task}", rng.choice(bodies))
        return [(op.protocol, op.expect, status, detail)]

    async def op_hf_malformed(self, op: Op, rng: random.Random) -> list[Any]:
        path, body = rng.choice([("/models/no-such-model", b'{"inputs": "x"}'),
                                 (f"/models/{self.target.models[self._task(rng)]}", b'{"inputs": ')])  # fmt: skip
        status, detail = await self.post(path, body)
        return [(op.protocol, op.expect, status, detail)]

    async def op_v2_http_malformed(self, op: Op, rng: random.Random) -> list[Any]:
        task = self._task(rng)
        model = self.target.models[task]
        good = self.v2_body(task, rng)
        wrong_name = {"inputs": [{**good["inputs"][0], "name": "WORDS"}]}
        wrong_shape = {"inputs": [{**t, "shape": [len(t["data"]) + 1, 1]} for t in good["inputs"]]}
        wrong_type = {"inputs": [{**t, "datatype": "FP32"} for t in good["inputs"]]}
        path, body = rng.choice([
            (f"/v2/models/{model}/infer", orjson.dumps(wrong_name)),
            (f"/v2/models/{model}/infer", orjson.dumps(wrong_shape)),
            (f"/v2/models/{model}/infer", orjson.dumps(wrong_type)),
            (f"/v2/models/{model}/infer", b'{"inputs": [}'),
            ("/v2/models/no-such-model/infer", orjson.dumps(good)),
        ])  # fmt: skip
        status, detail = await self.post(path, body)
        return [(op.protocol, op.expect, status, detail)]

    async def op_grpc(self, op: Op, rng: random.Random) -> list[Any]:
        method, request = self.typed(self._task(rng), rng)
        status, detail = await self.unary(f"/{SERVICE}/{method}", request.SerializeToString(), rng)
        return [(op.protocol, op.expect, status, detail)]

    async def op_grpc_fresh_channel(self, op: Op, rng: random.Random) -> list[Any]:
        method, request = self.typed(self._task(rng), rng)
        channel = _channel(self.target.grpc or "", rng.randrange(1 << 30))
        try:
            call = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)(
                request.SerializeToString(), timeout=self.timeout_s
            )
            code = await call.code()
            detail = "" if code.name == "OK" else (await call.details() or "")
        finally:
            await channel.close()
        return [(op.protocol, op.expect, code.name, detail)]

    async def op_grpc_deadline(self, op: Op, rng: random.Random) -> list[Any]:
        method, request = self.typed(self._task(rng), rng)
        status, detail = await self.unary(f"/{SERVICE}/{method}", request.SerializeToString(), rng, timeout_s=0.001)
        return [(op.protocol, op.expect, status, detail)]

    async def op_v2_grpc(self, op: Op, rng: random.Random) -> list[Any]:
        request = self.v2_request(self._task(rng), rng)
        status, detail = await self.unary(V2_INFER, request.SerializeToString(), rng)
        return [(op.protocol, op.expect, status, detail)]

    def hostile_body(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        """(task, REST body) whose one text is far past the window budget."""
        task = self._task(rng)
        text = HOSTILE_TEXT[: rng.randint(1, 4) * MB]
        inputs: Any = {"question": "Who?", "context": text} if task == "qa" else text
        return task, {"model": self.target.models[task], "inputs": inputs}

    async def op_rest_hostile(self, op: Op, rng: random.Random) -> list[Any]:
        task, body = self.hostile_body(rng)
        status, detail = await self.post(f"/v1/{task}", orjson.dumps(body))
        return [(op.protocol, op.expect, status, detail)]

    async def op_grpc_hostile(self, op: Op, rng: random.Random) -> list[Any]:
        from loadtests.clients.pyload import grpc_request

        method, request = grpc_request(*self.hostile_body(rng))
        status, detail = await self.unary(f"/{SERVICE}/{method}", request.SerializeToString(), rng)
        return [(op.protocol, op.expect, status, detail)]

    async def op_grpc_malformed(self, op: Op, rng: random.Random) -> list[Any]:
        from proto.electra.v1 import electra_pb2 as pb

        task = self._task(rng)
        method, request = self.typed(task, rng)
        wrong_model = type(request)()
        wrong_model.CopyFrom(request)
        wrong_model.model = "no-such-model"
        too_many = pb.TagRequest(model=self.target.models.get("tag", ""), inputs=["x"] * 513)
        path, payload = rng.choice([
            (f"/{SERVICE}/{method}", wrong_model.SerializeToString()),
            (f"/{SERVICE}/{method}", b"\xff\xff\xff"),  # not a protobuf message
            (f"/{SERVICE}/Tag", too_many.SerializeToString()),
        ])  # fmt: skip
        status, detail = await self.unary(path, payload, rng)
        return [(op.protocol, op.expect, status, detail)]

    async def op_v2_grpc_malformed(self, op: Op, rng: random.Random) -> list[Any]:
        from proto.inference import grpc_service_pb2 as kserve

        task = self._task(rng)
        good = self.v2_request(task, rng)
        wrong_name = kserve.ModelInferRequest()
        wrong_name.CopyFrom(good)
        wrong_name.inputs[0].name = "WORDS"
        unknown = kserve.ModelInferRequest()
        unknown.CopyFrom(good)
        unknown.model_name = "no-such-model"
        overrun = kserve.ModelInferRequest(model_name=self.target.models[task])
        for name in V2_INPUTS[task]:
            overrun.inputs.add(name=name, datatype="BYTES", shape=[1, 1])
            overrun.raw_input_contents.append(b"\x09\x00\x00\x00abc")  # its length prefix overruns it
        payload = rng.choice([wrong_name, unknown, overrun]).SerializeToString()
        status, detail = await self.unary(V2_INFER, payload, rng)
        return [(op.protocol, op.expect, status, detail)]

    async def op_grpc_stream(self, op: Op, rng: random.Random, cancel: bool = False) -> list[Any]:
        """One Stream call carrying 1-6 messages (a tenth of them malformed); each message's own
        status is counted, then the call's."""
        import grpc

        from loadtests.clients.pyload import STREAM_FIELDS
        from proto.electra.v1 import electra_pb2 as pb

        channel = rng.choice(self.channels)
        call = channel.stream_stream(
            f"/{SERVICE}/Stream", request_serializer=None, response_deserializer=None, _registered_method=True
        )(timeout=self.timeout_s)
        expected: dict[str, str] = {}
        for k in range(rng.randint(2, 4) if cancel else rng.randint(1, 6)):
            key = str(k)
            if rng.random() < 0.1:
                unknown = pb.TagRequest(model="no-such-model", inputs=["x"])
                # One that sets no request (INVALID_ARGUMENT), or one for an unknown model (NOT_FOUND).
                message = rng.choice([pb.StreamRequest(id=key), pb.StreamRequest(id=key, tag=unknown)])
                expected[key] = "reject"
            else:
                method, request = self.typed(self._task(rng), rng)
                message = pb.StreamRequest(id=key, **{STREAM_FIELDS[method]: request})
                expected[key] = "ok"
            await call.write(message.SerializeToString())
        if cancel:
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            call.cancel()
            code = await call.code()
            return [(op.protocol, op.expect, "cancelled" if code is grpc.StatusCode.CANCELLED else code.name, "")]
        await call.done_writing()
        out = []
        names = {c.value[0]: c.name for c in grpc.StatusCode}
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                break
            response = pb.StreamResponse.FromString(raw)
            expect = expected.pop(response.id, None)
            status = names.get(response.status.code, str(response.status.code))
            if expect is None:
                out.append((op.protocol, "ok", "unknown-response-id", repr(response.id)))
            else:
                out.append((op.protocol, expect, status, response.status.message))
        code = await call.code()
        out.append(("grpc-stream-call", "ok", code.name, "" if code.name == "OK" else (await call.details() or "")))
        out.extend((op.protocol, e, "missing-response", f"message {k}") for k, e in expected.items())
        return out

    async def op_grpc_stream_cancel(self, op: Op, rng: random.Random) -> list[Any]:
        return await self.op_grpc_stream(op, rng, cancel=True)

    async def op_grpc_cancel(self, op: Op, rng: random.Random) -> list[Any]:
        import grpc

        if rng.random() < 0.5 or not self.target.protocols.get("v2-grpc"):
            method, request = self.typed(self._task(rng), rng)
            path = f"/{SERVICE}/{method}"
        else:
            path, request = V2_INFER, self.v2_request(self._task(rng), rng)
        call = self.method(rng.choice(self.channels), path)(request.SerializeToString(), timeout=self.timeout_s)
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        call.cancel()
        code = await call.code()
        return [(op.protocol, op.expect, "cancelled" if code is grpc.StatusCode.CANCELLED else code.name, "")]

    async def op_rest_cancel(self, op: Op, rng: random.Random) -> list[Any]:
        """A request abandoned in flight: aiohttp closes its connection."""
        task = self._task(rng)
        sent = asyncio.ensure_future(self.post(f"/v1/{task}", orjson.dumps(self.rest_body(task, rng))))
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        if sent.done():
            status, detail = sent.result()
            return [(op.protocol, op.expect, status, detail)]
        sent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sent
        return [(op.protocol, op.expect, "cancelled", "")]

    async def op_http_disconnect(self, op: Op, rng: random.Random) -> list[Any]:
        """A raw socket that hangs up: mid-body, or with the whole request sent, before the answer."""
        task = self._task(rng)
        body = orjson.dumps(self.rest_body(task, rng))
        host, port = self.target.http_host_port
        head = (f"POST /v1/{task} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) + (4096 if rng.random() < 0.5 else 0)}\r\n\r\n").encode()  # fmt: skip
        _, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head + body)
            await writer.drain()
            await asyncio.sleep(rng.uniform(0.0, 0.02))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return [(op.protocol, op.expect, "disconnected", "")]


def _channel(address: str, channel_id: int) -> Any:
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.channel_id", channel_id)]
    return grpc.aio.insecure_channel(address, options=options)


def failure_status(exc: BaseException) -> tuple[str, str]:
    """What the client saw when an operation raised instead of answering."""
    import grpc

    if isinstance(exc, TimeoutError):
        return "timeout", "no answer within the request timeout"
    if isinstance(exc, grpc.aio.AioRpcError):  # e.g. a stream read after the call failed
        return exc.code().name, exc.details() or ""
    return f"transport:{type(exc).__name__}", str(exc)[:300]


# ---------------------------------------------------------------- the run


@dataclass
class RunConfig:
    duration_s: float
    warmup_s: float
    sample_every_s: float
    concurrency: int
    timeout_s: float
    seed: int
    repository: Path | None = None  # where the served models' tokenizer is read, when known
    progress_every_s: float = 30.0


async def soak(target: Target, pid: int | None, config: RunConfig, mix: Sequence[Op]) -> dict[str, Any]:
    """Load and sample for config.duration_s; returns the samples, the tally and timings."""
    tokenizer = tokenizer_for(config.repository, list(target.models.values()))
    texts, pairable, qa = make_inputs(tokenizer, target.max_seq_len, config.seed)
    traffic = Traffic(target, texts, pairable, qa, config.timeout_s)
    await traffic.open()
    loop = asyncio.get_running_loop()
    tally = Tally()
    samples: list[dict[str, Any]] = []
    weights = [op.weight for op in mix]
    started = loop.time()
    stop_at = started + config.duration_s

    def record(results: list[tuple[str, str, str, str]], op: Op) -> None:
        at = loop.time() - started
        for protocol, expect, status, detail in results:
            tally.add(protocol, op.name, expect, status, detail, at)

    async def client(k: int) -> None:
        rng = random.Random(config.seed * 1000 + k)
        while loop.time() < stop_at:
            op = rng.choices(mix, weights)[0]
            try:
                results = await asyncio.wait_for(traffic.run(op, rng), config.timeout_s + 5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status, detail = failure_status(exc)
                results = [(op.protocol, op.expect, status, detail)]
            record(results, op)

    async def sampler() -> None:
        last_progress = 0.0
        tick = 0
        while True:
            t = loop.time() - started
            if pid is not None:
                usage = await asyncio.to_thread(procstat.tree_usage, pid)
                samples.append(make_sample(t, usage, tally.total, tally.errors))
            if t - last_progress >= config.progress_every_s - config.sample_every_s / 2:
                last_progress = t
                s = samples[-1] if samples else None
                memory = f", RSS {s['rss_bytes'] / MB:.1f} MB, fds {s['fds']}, threads {s['threads']}" if s else ""
                log(f"{t:5.0f} s: {tally.total} answers, {tally.errors} errors{memory}")
            if t >= config.duration_s:
                return
            tick += 1  # on a fixed grid (the sampling itself takes time), the last one at the end
            due = min(tick * config.sample_every_s, config.duration_s)
            await asyncio.sleep(max(0.01, started + due - loop.time()))

    sampling = asyncio.ensure_future(sampler())
    clients = [asyncio.ensure_future(client(k)) for k in range(config.concurrency)]
    try:
        # Bounded: clients stop starting requests at stop_at, and each request has a timeout.
        done, pending = await asyncio.wait(clients, timeout=config.duration_s + config.timeout_s + 15)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if pending:
            tally.add("soak", "client", "ok", "timeout", f"{len(pending)} client(s) still busy at the end")
        await asyncio.wait_for(sampling, timeout=config.sample_every_s + 10)
    finally:
        sampling.cancel()
        for task in clients:
            task.cancel()
        await asyncio.gather(sampling, *clients, return_exceptions=True)
        await traffic.close()
    return {"samples": samples, "tally": tally, "load_s": loop.time() - started}


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def settle_and_sample(url: str, pid: int | None, timeout_s: float = 20.0) -> dict[str, Any] | None:
    """Once the load is over: wait for nothing in flight (the /metrics gauges), then one more
    sample (what an idle server keeps; reported, not judged)."""
    from loadtests.promscrape import parse, value

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            samples = parse(httpx.get(url + "/metrics", timeout=5).text)
        except httpx.HTTPError:
            break
        if value(samples, "electra_inflight_requests") + value(samples, "electra_queue_depth") <= 0:
            break
        time.sleep(0.25)
    time.sleep(2.0)
    if pid is None:
        return None
    return make_sample(0.0, procstat.tree_usage(pid))


# ---------------------------------------------------------------- outputs


def render(result: dict[str, Any]) -> str:
    """soak.md: the verdict, the growth table and the answers by protocol."""
    verdict, conditions = result["verdict"], result["conditions"]
    lines = [
        f"# Soak: {'PASSED' if verdict['passed'] else 'FAILED'}",
        "",
        f"{conditions['duration_s']:g} s of mixed traffic ({conditions['concurrency']} clients, warm-up "
        f"{conditions['warmup_s']:g} s, a sample every {conditions['sample_every_s']:g} s) against "
        f"`{conditions['server']}`; {result['runtime_s']:.0f} s in all.",
        "",
    ]
    lines += [f"- {r}" for r in verdict["reasons"]] + ([""] if verdict["reasons"] else [])
    summary = result.get("summary")
    if summary and summary.get("ok"):
        first, last = summary["first_window"], summary["last_window"]
        lines += [
            f"Server process tree ({len(summary['process_sets'][0]) if summary['process_sets'] else 0} processes); "
            f"first window {first[0]:.0f}-{first[1]:.0f} s ({first[2]} samples), "
            f"last window {last[0]:.0f}-{last[1]:.0f} s ({last[2]} samples), medians:",
            "",
            "| metric | first window | last window | growth | min | max | limit | passed |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for name, m in summary["metrics"].items():
            check = verdict["checks"].get(name, {})
            limit = f"{check.get('limit', 0) * 100:g}%" + (f" and +{check['slack']}" if check.get("slack") else "")
            lines.append(
                f"| {name.replace('_bytes', ' (MB)')} | {_cell(name, m['first'])} | {_cell(name, m['last'])} "
                f"| {m['growth'] * 100:+.1f}% ({_cell(name, m['growth_abs'], signed=True)}) | {_cell(name, m['min'])} "
                f"| {_cell(name, m['max'])} | {limit} | {'yes' if check.get('passed') else 'no'} |"
            )
        if result.get("after"):
            after = result["after"]
            lines += ["", f"Idle after the load: RSS {after['rss_bytes'] / MB:.1f} MB, fds {after['fds']}, "
                          f"threads {after['threads']} (reported, not judged)."]  # fmt: skip
        lines.append("")
    elif summary:
        lines += [f"Not sampled: {summary.get('reason')}", ""]
    else:
        lines += ["Not sampled (a running server given by --url without --pid): only the answers are judged.", ""]
    tally = result["outcomes"]
    lines += [
        f"{tally['total']} answers, {tally['errors']} unexpected; by protocol:",
        "",
        "| protocol | " + " | ".join(CATEGORIES) + " | statuses |",
        "|---|" + "---:|" * len(CATEGORIES) + "---|",
    ]
    for protocol, categories in tally["by_protocol_category"].items():
        statuses = ", ".join(f"{s} {n}" for s, n in tally["by_protocol_status"][protocol].items())
        lines.append(f"| {protocol} | " + " | ".join(str(categories.get(c, 0)) for c in CATEGORIES)
                     + f" | {statuses} |")  # fmt: skip
    if tally["error_examples"]:
        lines += ["", "First unexpected answers:", ""]
        lines += [f"- {e['t_s']:.1f} s {e['operation']} ({e['protocol']}): {e['status']} {e['detail']}"
                  for e in tally["error_examples"][:10]]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(name: str, value: float, signed: bool = False) -> str:
    if name == "rss_bytes":
        return f"{value / MB:{'+' if signed else ''}.1f}"
    return f"{value:{'+' if signed else ''}g}"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """RSS, fds, threads and answers a second over time; the warm-up shaded, the two windows'
    medians drawn. None when matplotlib is missing or nothing was sampled."""
    samples = result["samples"]
    if not samples:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [s["t_s"] for s in samples]

    def per_second(key: str) -> list[float]:
        return [0.0] + [(b[key] - a[key]) / max(1e-9, b["t_s"] - a["t_s"]) for a, b in pairwise(samples)]

    series = [
        ("RSS (MB)", [s["rss_bytes"] / MB for s in samples], "rss_bytes", MB),
        ("open file descriptors", [s["fds"] for s in samples], "fds", 1),
        ("threads", [s["threads"] for s in samples], "threads", 1),
        ("answers / s", per_second("requests"), None, 1),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 9), sharex=True)
    summary = result.get("summary") or {}
    warmup = result["conditions"]["warmup_s"]
    for ax, (label, values, key, scale) in zip(axes, series, strict=True):
        ax.plot(t, values, lw=1.2, label="server" if key else "answers")
        pids = sorted({p for s in samples for p in s.get("by_pid", {})})
        if key and 1 < len(pids) <= 8:
            for p in pids:
                per = [s["by_pid"][p][key] / scale if p in s["by_pid"] else math.nan for s in samples]
                ax.plot(t, per, lw=0.6, alpha=0.6, label=f"pid {p}")
            ax.legend(fontsize=6, loc="upper left")
        ax.axvspan(0, warmup, color="0.9", label="warm-up")
        if key and summary.get("ok"):
            m = summary["metrics"][key]
            for window, value in ((summary["first_window"], m["first"]), (summary["last_window"], m["last"])):
                ax.hlines(value / scale, window[0], window[1], colors="C3", lw=2)
        if key is None:
            ax.plot(t, per_second("errors"), lw=1.0, color="C3", label="unexpected")
            ax.legend(fontsize=6, loc="upper left")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    verdict = "passed" if result["verdict"]["passed"] else "FAILED"
    axes[0].set_title(f"soak: {result['conditions']['server']} ({verdict})", fontsize=9)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], results_dir: Path, name: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(render(result))
    written = [json_path, md_path]
    png = plot(result, results_dir / f"{name}.png")
    if png is not None:
        written.append(png)
    return written


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="seconds not judged at the start (default 60)")
    p.add_argument("--sample-every-s", type=float, default=5.0)
    p.add_argument(
        "--window-s", type=float, default=None, help="the windows compared (default: a fifth of the time after warm-up)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="clients in the closed loop (default 8)")
    p.add_argument("--max-growth", type=float, default=0.05, help="RSS / fds / threads growth allowed (default 0.05)")
    p.add_argument("--fd-slack", type=int, default=Limits.fd_slack, help="fds may grow by this many regardless")
    p.add_argument("--thread-slack", type=int, default=Limits.thread_slack)
    p.add_argument("--request-timeout-s", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS, help="output directory (default loadtests/results)")
    p.add_argument("--name", default="soak", help="output file names: NAME.json, NAME.md, NAME.png")
    server = p.add_argument_group("its own server (the default)")
    server.add_argument("--model-repository", type=Path, default=None, help="default: the embedded demo models")
    server.add_argument("--device", default="cpu")
    server.add_argument("--server-arg", action="append", default=[], help="any further server flag, e.g. --workers=2")
    running = p.add_argument_group("a running server instead")
    running.add_argument("--url", help="its REST base URL, e.g. http://127.0.0.1:8000")
    running.add_argument("--grpc", help="its gRPC host:port, e.g. 127.0.0.1:8001")
    running.add_argument("--pid", type=int, help="its (top) process, to sample; without it only answers are judged")
    args = p.parse_args(argv)
    if args.url and (args.model_repository or args.server_arg):
        p.error("--url targets a running server: --model-repository and --server-arg start one")
    if args.duration_s <= 0 or args.sample_every_s <= 0 or args.concurrency < 1:
        p.error("--duration-s and --sample-every-s must be positive, --concurrency at least 1")
    if args.warmup_s >= args.duration_s:
        p.error("--warmup-s must be shorter than --duration-s")
    for url in filter(None, [args.url, args.grpc and f"http://{args.grpc}"]):
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error(f"{url}: the soak only loads servers on this host's loopback")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    # SIGTERM ends the run like Ctrl-C: the server it started is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    server: ServerProcess | None = None
    try:
        repository = None
        if args.url:
            url, grpc_address, pid = args.url.rstrip("/"), args.grpc, args.pid
            described = url
        else:
            repository = args.model_repository
            if repository is None:
                from server.demo_repository import ensure_demo_repository

                repository = ensure_demo_repository()
            server = electra_server(repository, device=args.device, extra_args=args.server_arg,
                                    log_path=scratch / "server.log")  # fmt: skip
            models_said = "the demo models" if args.model_repository is None else str(repository)
            described = " ".join([f"electra-serve on {models_said}", *args.server_arg])
            log(f"starting {described}")
            try:
                server.start(timeout_s=300)
            except RuntimeError as exc:
                log(f"the server did not start: {exc}")
                _show_log(scratch / "server.log")
                return 2
            url, grpc_address, pid = server.url, server.grpc_target, server.pid
        protocols = offered_protocols_at(url, grpc_address)
        served = served_models(url)
        models = {task: m["name"] for task, m in served.items()}
        max_seq_len = {task: int(m["max_seq_len"]) for task, m in served.items() if m.get("max_seq_len")}
        mix = usable_mix(protocols)
        if not models or not mix:
            log(f"nothing to load: models {models}, protocols {protocols}")
            return 2
        config = RunConfig(args.duration_s, args.warmup_s, args.sample_every_s, args.concurrency,
                           args.request_timeout_s, args.seed, repository)  # fmt: skip
        offered = ", ".join(p for p, on in protocols.items() if on)
        log(f"{args.duration_s:g} s of mixed load, {args.concurrency} clients, on {offered}; models {models}"
            + ("" if pid else "; no --pid: nothing is sampled"))  # fmt: skip
        run = asyncio.run(soak(Target(url, grpc_address, protocols, models, max_seq_len), pid, config, mix))
        after = settle_and_sample(url, pid)
        exit_code = server.stop() if server is not None else None
        limits = Limits(args.max_growth, args.fd_slack, args.thread_slack)
        summary = summarise(run["samples"], args.warmup_s, args.window_s) if pid else None
        verdict = judge(summary, run["tally"], limits)
        if server is not None and exit_code != 0:
            verdict["passed"] = False
            verdict["reasons"].append(f"the server exited with {exit_code} on SIGTERM (0 expected)")
        if server is not None:
            leftover = [p for p in _pids_of(run["samples"]) if _alive_in_group(p, server.pid)]
            if leftover:
                verdict["passed"] = False
                verdict["reasons"].append(f"server processes still alive after it stopped: {leftover}")
        result = {
            "conditions": {
                "server": described,
                "duration_s": args.duration_s,
                "warmup_s": args.warmup_s,
                "sample_every_s": args.sample_every_s,
                "window_s": args.window_s,
                "concurrency": args.concurrency,
                "request_timeout_s": args.request_timeout_s,
                "seed": args.seed,
                "protocols": protocols,
                "models": models,
                "mix": {op.name: op.weight for op in mix},
                "limits": limits.__dict__,
                "host_cores": _cores(),
            },
            "verdict": verdict,
            "summary": summary,
            "outcomes": run["tally"].as_dict(),
            "after": after,
            "samples": run["samples"],
            "load_s": run["load_s"],
            "runtime_s": time.monotonic() - began,
        }
        if not verdict["passed"] and server is not None and (scratch / "server.log").exists():
            result["server_log_tail"] = (scratch / "server.log").read_text(errors="replace").splitlines()[-80:]
        for path in write_outputs(result, args.results, args.name):
            log(f"wrote {path}")
        print(render(result), end="")
        return 0 if verdict["passed"] else 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _pids_of(samples: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({int(p) for s in samples for p in s.get("by_pid", {})})


def _alive_in_group(pid: int, group: int) -> bool:
    """True when pid is still a live process of the server's process group (the server leads its
    own session: start_new_session); a zombie, or a pid reused by someone else, is not."""
    import os

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z" and os.getpgid(pid) == group
    except (OSError, IndexError):
        return False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _show_log(path: Path) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-30:]:
            print(f"  | {line}", file=sys.stderr)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
