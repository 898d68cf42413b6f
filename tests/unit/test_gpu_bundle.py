"""tools/gpu-bundle.sh, its CPU-side steps: a file split into checksummed parts and joined again,
damaged or missing parts refused, parts gathered over several deliveries, an offline install of the
reassembled wheel, and the CUDA check refusing a CPU-only onnxruntime. `prepare` needs the package
index and is not run here (docs/PERFORMANCE.md, "An offline GPU host")."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu-bundle.sh"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "split", "sha256sum", "numfmt")),
    reason="tools/gpu-bundle.sh needs bash and GNU coreutils (split, sha256sum, numfmt)",
)


def bundle(*args: str | Path, home: Path | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    if home is not None:
        env["GPU_BUNDLE_HOME"] = str(home)
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_split_and_join_give_the_same_bytes(tmp_path: Path) -> None:
    data = random_file(tmp_path / "blob.whl", 250_000)
    split = bundle("split", tmp_path / "blob.whl", tmp_path / "parts", "--part-size", "100K")
    assert split.returncode == 0, split.stderr
    parts = sorted((tmp_path / "parts").glob("blob.whl.part-*"))
    assert [p.name[-3:] for p in parts] == ["000", "001", "002"]
    assert all(p.stat().st_size <= 100 * 1024 for p in parts)
    whole = (tmp_path / "parts" / "WHOLE.sha256").read_text().split()
    assert whole == [hashlib.sha256(data).hexdigest(), "blob.whl"]
    listed = [line.split()[1] for line in (tmp_path / "parts" / "PARTS.sha256").read_text().splitlines()]
    assert listed == [p.name for p in parts]

    joined = bundle("join", tmp_path / "parts", tmp_path / "out")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.strip() == str(tmp_path / "out" / "blob.whl")
    assert (tmp_path / "out" / "blob.whl").read_bytes() == data


def test_a_damaged_or_missing_part_is_refused(tmp_path: Path) -> None:
    random_file(tmp_path / "blob.whl", 50_000)
    assert bundle("split", tmp_path / "blob.whl", tmp_path / "parts", "--part-size", "20K").returncode == 0
    part = tmp_path / "parts" / "blob.whl.part-001"
    original = part.read_bytes()
    part.write_bytes(b"x" + original[1:])
    damaged = bundle("join", tmp_path / "parts", tmp_path / "out")
    assert damaged.returncode != 0 and "damaged" in damaged.stderr
    part.unlink()
    missing = bundle("join", tmp_path / "parts", tmp_path / "out")
    assert missing.returncode != 0 and "missing blob.whl.part-001" in missing.stderr
    assert not (tmp_path / "out" / "blob.whl").exists()


def test_stash_gathers_parts_over_several_deliveries(tmp_path: Path) -> None:
    data = random_file(tmp_path / "blob.whl", 30_000)
    assert bundle("split", tmp_path / "blob.whl", tmp_path / "all", "--part-size", "10K").returncode == 0
    home = tmp_path / "home"
    for i, wanted in enumerate((["000"], ["001", "002"])):
        delivery = tmp_path / f"delivery{i}" / ".gpu" / "parts"
        delivery.mkdir(parents=True)
        for name in ("PARTS.sha256", "WHOLE.sha256", *(f"blob.whl.part-{n}" for n in wanted)):
            shutil.copy(tmp_path / "all" / name, delivery / name)
        stashed = bundle("stash", delivery.parent, home=home)
        assert stashed.returncode == 0, stashed.stderr
        assert f"{1 if i == 0 else 3} of 3 parts" in stashed.stdout
    assert bundle("join", home / "parts", tmp_path / "out").returncode == 0
    assert (tmp_path / "out" / "blob.whl").read_bytes() == data


def tiny_wheel(path: Path) -> Path:
    """A valid pure-Python wheel, `gpubundle_probe` 0.1, that pip installs without an index."""
    wheel = path / "gpubundle_probe-0.1-py3-none-any.whl"
    files = {
        "gpubundle_probe/__init__.py": b"ANSWER = 42\n",
        "gpubundle_probe-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpubundle-probe\nVersion: 0.1\n",
        "gpubundle_probe-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items())
    record += "gpubundle_probe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("gpubundle_probe-0.1.dist-info/RECORD", record)
    return wheel


def test_install_reassembles_and_installs_offline(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    checkout = tmp_path / "checkout"
    assert bundle("split", wheel, checkout / ".gpu" / "parts", "--part-size", "1K").returncode == 0
    home = tmp_path / "home"
    installed = bundle("install", "--no-check", home=home, cwd=checkout)
    assert installed.returncode == 0, installed.stderr
    env_file = (home / "env").read_text()
    assert str(home / "site") in env_file and str(checkout) in env_file
    imported = subprocess.run(
        [sys.executable, "-c", "import gpubundle_probe; print(gpubundle_probe.ANSWER)"],
        env={**os.environ, "PYTHONPATH": str(home / "site")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == "42", imported.stderr


def test_check_refuses_an_onnxruntime_without_cuda() -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing to refuse")
    checked = bundle("check")
    assert checked.returncode != 0
    assert "CUDAExecutionProvider is not available" in checked.stderr


def test_help_and_unknown_commands() -> None:
    assert "prepare" in bundle("--help").stdout
    unknown = bundle("frobnicate")
    assert unknown.returncode == 2 and "prepare" in unknown.stderr
