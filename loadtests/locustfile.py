"""Locust scenarios: mixed classify / qa / tag / discriminate traffic with realistic lengths, over
REST (`RestUser`) and the typed gRPC API (`GrpcUser`).

Texts come from the bench's generator (loadtests/data.py): 8-128 tokens, log-normal around 32;
QA contexts of 300-1,500 tokens, split by the server into stride windows. The traffic mix is
classify 50%, tag 20%, discriminate 20%, qa 10% (weights on the tasks below). Requests name no
model: each goes to the one loaded model of its task (the demo repository has one per task).

Headless, with CSV output (against `electra-serve` with the demo models on its default ports):

    locust -f loadtests/locustfile.py --headless -u 32 -r 8 -t 60s \\
        --host http://127.0.0.1:8000 --csv loadtests/results/locust RestUser GrpcUser

`ELECTRA_GRPC_ADDRESS` (default 127.0.0.1:8001) is where GrpcUser connects; `LOCUST_TEXTS` and
`LOCUST_QA` size the generated sets (default 1,000 and 32). Locust itself (gevent, Python) is a
scenario tool, not the bench's load generator: for throughput figures use loadtests/bench.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, events, task

from loadtests import data

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to gevent's loop

_TOKENIZER = data.bert_tokenizer()
TEXTS = data.mixed_texts(_TOKENIZER, int(os.environ.get("LOCUST_TEXTS", "1000")))
QA = data.qa_pairs(_TOKENIZER, int(os.environ.get("LOCUST_QA", "32")))
GRPC_ADDRESS = os.environ.get("ELECTRA_GRPC_ADDRESS", "127.0.0.1:8001")


def _text() -> str:
    return random.choice(TEXTS)


def _texts(max_n: int = 4) -> list[str]:
    """Mostly single inputs, sometimes a small list (as a client batching a page of items)."""
    return [_text() for _ in range(1 if random.random() < 0.8 else random.randint(2, max_n))]


class RestUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def _post(self, path: str, body: dict[str, Any]) -> None:
        with self.client.post(path, json=body, name=path, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(50)
    def classify(self) -> None:
        texts = _texts()
        self._post("/v1/classify", {"inputs": texts if len(texts) > 1 else texts[0]})

    @task(20)
    def tag(self) -> None:
        self._post("/v1/tag", {"inputs": _text()})

    @task(20)
    def discriminate(self) -> None:
        self._post("/v1/discriminate", {"inputs": _texts()})

    @task(10)
    def qa(self) -> None:
        pair = random.choice(QA)
        self._post("/v1/qa", {"inputs": {"question": pair.question, "context": pair.context}})


class GrpcUser(User):
    """The typed `electra.v1.ElectraService`; every call is reported to locust as request_type grpc."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        from proto.electra.v1 import electra_pb2 as pb
        from proto.electra.v1 import electra_pb2_grpc

        self.pb = pb
        self.channel = grpc.insecure_channel(GRPC_ADDRESS)
        self.stub = electra_pb2_grpc.ElectraServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, method: Any, request: Any) -> None:
        started = time.perf_counter()
        error: Exception | None = None
        size = 0
        try:
            response = method(request, timeout=30)
            size = response.ByteSize()
        except grpc.RpcError as exc:
            error = exc
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )

    @task(50)
    def classify(self) -> None:
        inputs = [self.pb.ClassifyInput(text=t) for t in _texts()]
        self._call("Classify", self.stub.Classify, self.pb.ClassifyRequest(inputs=inputs))

    @task(20)
    def tag(self) -> None:
        self._call("Tag", self.stub.Tag, self.pb.TagRequest(inputs=[_text()]))

    @task(20)
    def discriminate(self) -> None:
        self._call("Discriminate", self.stub.Discriminate, self.pb.DiscriminateRequest(inputs=_texts()))

    @task(10)
    def qa(self) -> None:
        pair = random.choice(QA)
        request = self.pb.AnswerQuestionRequest(inputs=[self.pb.QaInput(question=pair.question, context=pair.context)])
        self._call("AnswerQuestion", self.stub.AnswerQuestion, request)
