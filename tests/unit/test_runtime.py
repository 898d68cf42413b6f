"""OnnxModelRuntime on tiny hand-built ONNX graphs (onnx.helper): no export, no torch.

Each graph computes something checkable from its inputs (discriminate logits = ids * mask +
token types), so the tests can tell that every row got its own values back.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server.core import cuda
from server.core.device import select_device, select_precision
from server.core.errors import ModelLoadError
from server.core.manifest import Manifest
from server.core.runtime import OnnxModelRuntime, RuntimeOptions, bucket_shape, sha256_of, warmup_buckets

MAX_SEQ_LEN = 64
DIMS = ["batch_size", "sequence_length"]


def _graph(task: str, out_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A graph with the contract's three int64 inputs and the task's outputs."""
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, DIMS)
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Add", ["masked", "token_type_ids"], ["summed"]),
        helper.make_node("Cast", ["summed"], ["seq"], to=out_type),  # [B, L]: ids*mask + types
    ]
    if task == "discriminate":
        nodes.append(helper.make_node("Identity", ["seq"], ["logits"]))
        outputs = [helper.make_tensor_value_info("logits", out_type, DIMS)]
    elif task == "classify":  # [B, 2]: (sum, -sum) over the row
        nodes += [
            helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
            helper.make_node("ReduceSum", ["seq", "axis"], ["total"], keepdims=1),
            helper.make_node("Neg", ["total"], ["negated"]),
            helper.make_node("Concat", ["total", "negated"], ["logits"], axis=1),
        ]
        outputs = [helper.make_tensor_value_info("logits", out_type, ["batch_size", 2])]
    elif task == "tag":  # [B, L, 3]: (x, 2x, 3x)
        nodes += [
            helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [1], [2])),
            helper.make_node("Unsqueeze", ["seq", "axis"], ["x"]),
            helper.make_node("Add", ["x", "x"], ["x2"]),
            helper.make_node("Add", ["x2", "x"], ["x3"]),
            helper.make_node("Concat", ["x", "x2", "x3"], ["logits"], axis=2),
        ]
        outputs = [helper.make_tensor_value_info("logits", out_type, [*DIMS, 3])]
    elif task == "qa":  # start = seq, end = -seq
        nodes += [
            helper.make_node("Identity", ["seq"], ["start_logits"]),
            helper.make_node("Neg", ["seq"], ["end_logits"]),
        ]
        outputs = [helper.make_tensor_value_info(n, out_type, DIMS) for n in ("start_logits", "end_logits")]
    else:  # a graph that breaks the contract: wrong output name
        nodes.append(helper.make_node("Identity", ["seq"], ["scores"]))
        outputs = [helper.make_tensor_value_info("scores", out_type, DIMS)]
    model = helper.make_model(
        helper.make_graph(nodes, task, inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _write_model(root: Path, task: str, precisions: tuple[str, ...] = ("fp32", "fp16")) -> tuple[Path, Manifest]:
    model_dir = root / f"tiny-{task}"
    model_dir.mkdir(parents=True)
    variants = {}
    for precision in precisions:
        out_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        path = model_dir / f"model.{precision}.onnx"
        onnx.save(_graph("bad" if task == "bad" else task, out_type), path)
        variants[precision] = {
            "file": path.name,
            "sha256": sha256_of(path),
            "parity": {"max_abs_error": 0.0, "top1_agreement": 1.0},
        }
    manifest = Manifest.model_validate(
        {
            "name": f"tiny-{task}",
            "task": "discriminate" if task == "bad" else task,
            "max_seq_len": MAX_SEQ_LEN,
            "labels": {"classify": ["NEG", "POS"], "tag": ["O", "B-X", "I-X"]}.get(task, []),
            "variants": variants,
            "source": {"model": "hand-built"},
        }
    )
    manifest.write(model_dir)
    return model_dir, manifest


def _inputs(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for j, n in enumerate(lengths):
        ids[j, :n] = rng.integers(1, 1000, n)
        mask[j, :n] = 1
        types[j, n // 2 : n] = 1
    return ids, mask, types


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "cuda_usable", lambda: (False, "no GPU in this test"))


# -- device and precision ----------------------------------------------------------------------


def test_select_device_cpu_and_auto_without_gpu(no_cuda: None) -> None:
    assert select_device("cpu") == "cpu"
    assert select_device("auto") == "cpu"


def test_select_device_cuda_without_gpu_is_a_clear_error(no_cuda: None) -> None:
    with pytest.raises(ModelLoadError, match="CUDA is not usable: no GPU in this test"):
        select_device("cuda")


def test_select_device_auto_picks_cuda_when_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "cuda_usable", lambda: (True, "1 GPU(s)"))
    assert select_device("auto") == "cuda"
    assert select_device("cuda") == "cuda"
    assert select_device("cpu") == "cpu"


def test_select_device_rejects_unknown() -> None:
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_cuda_probe_on_this_machine_answers_with_a_reason() -> None:
    # onnxruntime (CPU build) in the test environment: no CUDA provider, and a reason to show.
    usable, reason = cuda.cuda_usable()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert usable is False
        assert "onnxruntime-gpu" in reason
    assert reason


def test_select_precision(tmp_path: Path) -> None:
    _, both = _write_model(tmp_path, "discriminate", ("fp32", "fp16"))
    assert select_precision("auto", "cpu", both) == "fp32"
    assert select_precision("auto", "cuda", both) == "fp16"
    assert select_precision("fp16", "cpu", both) == "fp16"
    _, only32 = _write_model(tmp_path / "b", "discriminate", ("fp32",))
    assert select_precision("auto", "cuda", only32) == "fp32"


def test_select_precision_missing_variant_lists_what_exists(tmp_path: Path) -> None:
    _, manifest = _write_model(tmp_path, "discriminate", ("fp32", "fp16"))
    with pytest.raises(ModelLoadError, match=r"no int8 variant \(it has: fp32, fp16\)"):
        select_precision("int8", "cpu", manifest)
    with pytest.raises(ModelLoadError, match="unknown precision 'bf16'"):
        select_precision("bf16", "cpu", manifest)
    _, only16 = _write_model(tmp_path / "b", "discriminate", ("fp16",))
    with pytest.raises(ModelLoadError, match="it has: fp16"):
        select_precision("auto", "cpu", only16)


# -- loading -------------------------------------------------------------------------------------


def test_sha256_mismatch_refuses_to_load(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    with open(model_dir / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")  # one byte appended: still a loadable protobuf, but not what was exported
    with pytest.raises(ModelLoadError, match=r"sha256 .* does not match"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")


def test_missing_file_and_escaping_path(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    (model_dir / "model.fp32.onnx").unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")
    escaping = manifest.model_copy(deep=True)
    escaping.variants["fp32"].file = "../elsewhere.onnx"
    with pytest.raises(ModelLoadError, match="outside its directory"):
        OnnxModelRuntime(model_dir, escaping, "cpu", "fp32")


def _externalize(model_dir: Path, manifest: Manifest) -> Manifest:
    """Rewrite the fp32 variant with its weights as external data, as the export ships them."""
    from export.optimize import externalize_weights

    variant = manifest.variants["fp32"]
    graph = onnx.load(model_dir / variant.file)
    # A 2 KB weight (zeros, added to the logits) so that there is something to move out of the graph.
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(512, np.float32), "w"))
    logits = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = ["pre" if o == logits else o for o in node.output]
    graph.graph.node.extend(
        [
            helper.make_node("ReduceSum", ["w"], ["zero"], keepdims=0),
            helper.make_node("Add", ["pre", "zero"], [logits]),
        ]
    )
    onnx.save(graph, model_dir / variant.file)
    data = externalize_weights(model_dir / variant.file)
    assert data is not None
    variant.sha256 = sha256_of(model_dir / variant.file)
    variant.data_file, variant.data_sha256 = data.name, sha256_of(data)
    manifest.write(model_dir)
    return manifest


def test_external_weights_load_and_are_verified(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "classify", ("fp32",))
    inline = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32").run(*_inputs([5, 3]))
    manifest = _externalize(model_dir, manifest)
    assert (model_dir / "model.fp32.onnx.data").stat().st_size > 0
    external = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32").run(*_inputs([5, 3]))
    np.testing.assert_array_equal(external["logits"], inline["logits"])

    with open(model_dir / "model.fp32.onnx.data", "r+b") as f:
        f.write(b"\x7f")  # one weight byte changed: same size, different model
    with pytest.raises(ModelLoadError, match=r"model.fp32.onnx.data is corrupt or was replaced"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")
    (model_dir / "model.fp32.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match=r"weights file .* is missing"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")


def test_precision_not_in_manifest(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    with pytest.raises(ModelLoadError, match="no int8 variant"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "int8")


def test_graph_breaking_the_contract_is_refused(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "bad", ("fp32",))
    with pytest.raises(ModelLoadError, match="do not match the discriminate contract"):
        OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")


def test_cuda_session_that_falls_back_to_cpu_is_an_error(tmp_path: Path) -> None:
    # onnxruntime (CPU build) only warns and runs on the CPU when CUDA is asked for: never accept that.
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    with pytest.warns(UserWarning), pytest.raises(ModelLoadError, match="instead of CUDA"):
        OnnxModelRuntime(model_dir, manifest, "cuda", "fp32")


def test_load_reads_manifest_and_resolves_auto(tmp_path: Path, no_cuda: None) -> None:
    model_dir, _ = _write_model(tmp_path, "qa", ("fp32", "fp16"))
    rt = OnnxModelRuntime.load(model_dir)
    assert (rt.device, rt.precision) == ("cpu", "fp32")
    assert rt.providers == ["CPUExecutionProvider"]
    assert rt.output_names == ("start_logits", "end_logits")
    with pytest.raises(ModelLoadError, match="cannot read the manifest"):
        OnnxModelRuntime.load(tmp_path / "nowhere")


# -- running -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["discriminate", "classify", "tag", "qa"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_run_shapes_and_values(tmp_path: Path, task: str, precision: str) -> None:
    model_dir, manifest = _write_model(tmp_path, task)
    rt = OnnxModelRuntime(model_dir, manifest, "cpu", precision)  # type: ignore[arg-type]
    ids, mask, types = _inputs([5, 9, 1])
    out = rt.run(ids, mask, types)
    assert set(out) == set(manifest.output_names)
    seq = (ids * mask + types).astype(np.float32)
    for array in out.values():
        assert array.dtype == np.float32  # fp16 graphs come back as float32 too
    if task == "discriminate":
        np.testing.assert_allclose(out["logits"], seq, rtol=1e-3)
    elif task == "classify":
        assert out["logits"].shape == (3, 2)
        np.testing.assert_allclose(out["logits"][:, 0], seq.sum(axis=1), rtol=1e-3)
    elif task == "tag":
        assert out["logits"].shape == (3, 9, 3)
        np.testing.assert_allclose(out["logits"][..., 2], 3 * seq, rtol=1e-3)
    else:
        np.testing.assert_allclose(out["end_logits"], -seq, rtol=1e-3)
    assert rt.sequence_outputs == (() if task == "classify" else manifest.output_names)


def test_run_rejects_bad_shapes(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    rt = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")
    ids, mask, types = _inputs([4, 4])
    with pytest.raises(ValueError, match="every input must be"):
        rt.run(ids, mask[:, :3], types)
    long = np.ones((1, MAX_SEQ_LEN + 1), dtype=np.int64)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        rt.run(long, long, long)


def test_run_is_thread_safe_with_several_cpu_sessions(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    rt = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32", RuntimeOptions(cpu_sessions=2, intra_op_threads=1))
    assert len(rt._sessions) == 2

    def check(seed: int) -> bool:
        ids, mask, types = _inputs([1 + seed % 7, 3, 11], seed=seed)
        return bool(np.array_equal(rt.run(ids, mask, types)["logits"], ids * mask + types))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(64)))


def test_warmup_runs_every_bucket(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "tag", ("fp32",))
    rt = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32", RuntimeOptions(cpu_sessions=2))
    seen: list[tuple[int, ...]] = []
    real_run = rt.run
    rt.run = lambda i, m, t: (seen.append(i.shape), real_run(i, m, t))[1]  # type: ignore[method-assign]
    assert not rt.warmed_up
    seconds = rt.warmup([(1, 8), (4, 1000)])
    assert rt.warmed_up and seconds >= 0
    # each shape once per session; a length past the model is clamped to max_seq_len
    assert seen == [(1, 8), (1, 8), (4, MAX_SEQ_LEN), (4, MAX_SEQ_LEN)]


# -- shape buckets and IO binding (the CUDA path's logic, exercised with CPU buffers) -------------


def test_bucket_shape_covers_input_and_stays_within_max_seq_len() -> None:
    for batch in range(1, 70):
        for seq in range(1, 520):
            b, n = bucket_shape(batch, seq, 512)
            assert b >= batch and n >= seq and n <= max(seq, 512)
            assert b <= max(2 * batch, batch + 7)  # padding stays bounded
    assert bucket_shape(3, 5, 512) == (4, 8)
    assert bucket_shape(9, 65, 512) == (16, 128)
    assert bucket_shape(1, 500, 500) == (1, 500)
    assert bucket_shape(1, 600, 512) == (1, 600)  # never shrinks a (too long) input


def test_warmup_buckets_cuda_cover_every_reachable_shape() -> None:
    max_batch, max_seq, max_tokens = 32, 256, 2048
    shapes = set(warmup_buckets("cuda", max_batch, max_seq, max_tokens))
    for batch in range(1, max_batch + 1):
        for seq in range(1, max_seq + 1):
            if batch == 1 or batch * seq <= max_tokens:
                assert bucket_shape(batch, seq, max_seq) in shapes, (batch, seq)
    assert (32, 256) not in shapes  # far beyond the token budget: never warmed


def test_warmup_buckets_cpu_are_few_and_within_budget() -> None:
    assert warmup_buckets("cpu", 32, 512, 8192) == [(1, 16), (8, 64)]
    assert warmup_buckets("cpu", 4, 512, 8192) == [(1, 16), (4, 64)]
    assert warmup_buckets("cpu", 32, 512, 128) == [(1, 16), (2, 64)]  # within the token budget
    assert warmup_buckets("cpu", 1, 8, 8) == [(1, 8)]


@pytest.mark.parametrize("task", ["discriminate", "classify", "tag", "qa"])
def test_io_binding_matches_plain_run(tmp_path: Path, task: str) -> None:
    model_dir, manifest = _write_model(tmp_path, task, ("fp32", "fp16"))
    plain = OnnxModelRuntime(model_dir, manifest, "cpu", "fp16")
    bound = OnnxModelRuntime(model_dir, manifest, "cpu", "fp16", RuntimeOptions(io_binding=True))
    assert bound._binder is not None
    for k, lengths in enumerate([[5, 9, 1], [3], [17, 2, 2, 2, 30], [5, 9, 1], [64, 64]]):
        ids, mask, types = _inputs(lengths, seed=k)
        expected, got = plain.run(ids, mask, types), bound.run(ids, mask, types)
        assert set(got) == set(expected)
        for name in expected:
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], expected[name])
    # [3,9] and the repeated shape share a bucket: (4, 16), (1, 8), (8, 32), (2, 64)
    assert bound._binder.bucket_count == 4


def test_io_binding_results_do_not_alias_reused_buffers(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    bound = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32", RuntimeOptions(io_binding=True))
    first_inputs = _inputs([6, 6], seed=1)
    first = bound.run(*first_inputs)["logits"]
    snapshot = first.copy()
    bound.run(*_inputs([6, 6], seed=2))  # same bucket, new contents
    np.testing.assert_array_equal(first, snapshot)


def test_io_binding_is_thread_safe(tmp_path: Path) -> None:
    model_dir, manifest = _write_model(tmp_path, "discriminate", ("fp32",))
    bound = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32", RuntimeOptions(io_binding=True))
    errors: list[str] = []

    def worker(seed: int) -> None:
        for k in range(30):
            ids, mask, types = _inputs([3 + (seed + k) % 5, 4], seed=seed * 100 + k)
            if not np.array_equal(bound.run(ids, mask, types)["logits"], ids * mask + types):
                errors.append(f"thread {seed} run {k}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_cuda_provider_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chain = cuda.providers(
        device_id=1, precision="fp16", tensorrt=False, max_batch_size=8, max_seq_len=128, trt_cache_dir=None
    )
    assert chain == [("CUDAExecutionProvider", {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"})]
    with pytest.raises(RuntimeError, match="TensorRT was asked for"):
        cuda.providers(
            device_id=0, precision="fp16", tensorrt=True, max_batch_size=8, max_seq_len=128, trt_cache_dir=None
        )
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    chain = cuda.providers(
        device_id=0, precision="fp16", tensorrt=True, max_batch_size=8, max_seq_len=128, trt_cache_dir=tmp_path / "trt"
    )
    name, options = chain[0]
    assert name == "TensorrtExecutionProvider" and chain[1][0] == "CUDAExecutionProvider"
    assert options["trt_fp16_enable"] is True
    assert options["trt_profile_max_shapes"].startswith("input_ids:8x128,")
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()


@pytest.mark.parametrize("task", ["classify", "tag", "qa"])
async def test_batched_through_the_batcher_equals_single(tmp_path: Path, task: str) -> None:
    from server.core.batching import DynamicBatcher
    from server.core.config import BatchPolicy
    from server.core.rows import Row

    model_dir, manifest = _write_model(tmp_path, task, ("fp32",))
    rt = OnnxModelRuntime(model_dir, manifest, "cpu", "fp32")
    batcher = DynamicBatcher(rt.run, BatchPolicy(max_batch_size=4), sequence_outputs=rt.sequence_outputs)
    # lengths 1 and 2 next to the classifier's 2 labels: the padded length alone cannot tell
    # a [B, labels] output from a [B, seq] one
    lengths = [2, 1, 2, 7, 1, 30, 2]
    ids, _, types = _inputs(lengths, seed=3)
    rows = [Row(input_ids=ids[j, :n], token_type_ids=types[j, :n]) for j, n in enumerate(lengths)]
    batcher.start()
    try:
        batched = await batcher.submit(rows)
    finally:
        await batcher.stop()
    for r, got in zip(rows, batched.outputs, strict=True):
        single = rt.run(r.input_ids[None], np.ones((1, len(r)), np.int64), r.token_type_ids[None])
        assert set(got) == set(single)
        for name, value in single.items():
            np.testing.assert_array_equal(got[name], value[0])
