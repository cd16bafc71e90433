"""`llm-router pull` as a user runs it, against a loopback file server with Range support."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from file_server import FileServer, serve_files
from servers import SMOL, free_port

pytestmark = pytest.mark.real  # subprocesses


def _tiny_gguf() -> bytes:
    """A whole GGUF of ~3 MiB (one random tensor): `pull` checks a download is a model."""
    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "tiny.gguf"
        writer = gguf.GGUFWriter(str(out), "llama")
        writer.add_context_length(64)
        weights = np.random.default_rng().standard_normal((768, 1024)).astype(np.float32)
        writer.add_tensor("token_embd.weight", weights)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return out.read_bytes()


PAYLOAD = _tiny_gguf()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with serve_files({"files/model.gguf": PAYLOAD}) as srv:
        srv.cut_after = 2**20  # the connection drops after 1 MiB
        out = _cli("pull", f"{srv.url}/files/model.gguf", "--models-dir", str(models),
                   "--sha256", SHA)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert srv.ranges[0] is None and srv.ranges[1] == f"bytes={2**20}-"
    assert (models / "model.gguf").read_bytes() == PAYLOAD
    assert sorted(p.name for p in models.iterdir()) == ["model.gguf"]  # no .part left
    assert "pulled model.gguf" in out.stdout


def _stalled_pull(srv: FileServer, models: Path, after: int) -> subprocess.Popen[str]:
    """A pull of `model.gguf` that has written `after` bytes and waits for the rest."""
    srv.stall_after = after
    pull = subprocess.Popen(
        [sys.executable, "-m", "llm_router", "pull", f"{srv.url}/model.gguf",
         "--models-dir", str(models)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert srv.stalled.wait(60)
    part = models / ".model.gguf.part"
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < after) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pull


def test_cuts_that_make_progress_and_passing_5xx_are_retried(tmp_path: Path) -> None:
    """Tries that brought bytes counted against the 6-try cap (a server cutting every 10 MB
    failed a 94 MiB pull); a CDN's 503 was not retried at all."""
    models = tmp_path / "models"
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        srv.cut_every = 2**19  # 7 cuts for the ~3 MiB file
        srv.fail_first = [503, 502]
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models), "--sha256", SHA)
        assert out.returncode == 0, out.stderr
        assert len(srv.ranges) > 8
    assert (models / "model.gguf").read_bytes() == PAYLOAD


def test_a_part_left_by_an_earlier_pull_is_resumed(tmp_path: Path) -> None:
    """Only the rest is asked for, and only of the same file: If-Range names the ETag the
    first pull saw."""
    models = tmp_path / "models"
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        first = _stalled_pull(srv, models, 2**20)
        first.kill()  # a crash, or the machine going down
        first.communicate()
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models), "--sha256", SHA)
        assert out.returncode == 0, out.stderr
        assert srv.ranges == [None, f"bytes={2**20}-"]  # only the rest was sent
        assert srv.if_ranges == [None, f'"{SHA}"']
    assert (models / "model.gguf").read_bytes() == PAYLOAD
    assert sorted(p.name for p in models.iterdir()) == ["model.gguf"]


def test_a_part_of_another_file_is_never_completed_with_this_one(tmp_path: Path) -> None:
    """A `.part` was completed with whatever the URL served now: a file changed on the
    server, or a `.part` of unknown origin, made a corrupt model that pulled with exit 0."""
    models = tmp_path / "models"
    changed = _tiny_gguf()
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        first = _stalled_pull(srv, models, 2**20)
        first.kill()
        first.communicate()
        srv.files["model.gguf"] = changed  # a new upload under the same URL
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models))
        assert out.returncode == 0, out.stderr
    assert (models / "model.gguf").read_bytes() == changed
    (models / "model.gguf").unlink()
    (models / ".model.gguf.part").write_bytes(changed[: 2**20])  # whose? nobody says
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models))
        assert out.returncode == 0, out.stderr
        assert srv.ranges == [None]  # started again
    assert (models / "model.gguf").read_bytes() == PAYLOAD


def test_a_part_from_a_server_without_validators_starts_again(tmp_path: Path) -> None:
    """No ETag, no Last-Modified: nothing tells the same file from a new upload, and a
    resume spliced the two into a well-formed model of neither (exit 0)."""
    models = tmp_path / "models"
    changed = _tiny_gguf()
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        srv.etags = False
        first = _stalled_pull(srv, models, 2**20)
        first.kill()
        first.communicate()
        srv.files["model.gguf"] = changed
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models))
        assert out.returncode == 0, out.stderr
        assert srv.ranges == [None, None]  # the whole file again
    assert (models / "model.gguf").read_bytes() == changed


def test_a_second_pull_of_the_same_file_is_refused_while_one_runs(tmp_path: Path) -> None:
    """Both appended to one `.part`: the first ended with exit 0 and a corrupt model, the
    second with a traceback."""
    models = tmp_path / "models"
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        first = _stalled_pull(srv, models, 2**20)
        try:
            second = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models))
            assert second.returncode == 1
            assert "another pull is writing model.gguf" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
            srv.release.set()
            assert first.wait(60) == 0
        finally:
            first.kill()
            first.communicate()
    assert (models / "model.gguf").read_bytes() == PAYLOAD


def test_a_file_that_is_no_model_is_refused_and_removed(tmp_path: Path) -> None:
    """A web page (a login wall, a wrong link) or a truncated GGUF pulled with exit 0, and
    then sat in the models directory as an error or as nothing at all."""
    models = tmp_path / "models"
    page = b"<!doctype html><html><body>Sign in to download</body></html>"
    files = {"page.html": page, "fake.gguf": page, "cut.gguf": PAYLOAD[:-1000]}
    with serve_files(files) as srv:
        for name, why in (
            ("page.html", "it is no model file"),
            ("fake.gguf", "not a GGUF"),
            ("cut.gguf", "truncated"),
        ):
            out = _cli("pull", f"{srv.url}/{name}", "--models-dir", str(models))
            assert out.returncode == 1, (name, out.stderr)
            text = " ".join(out.stderr.split())
            assert "is not a usable model" in text and why in text, text
            assert "the download was deleted" in text
    assert list(models.iterdir()) == []


def test_a_corrupted_download_is_refused_and_removed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    corrupted = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])  # (a random last byte may be 0)
    with serve_files({"model.gguf": corrupted}) as srv:
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models), "--sha256", SHA)
    assert out.returncode == 1
    assert "sha256 mismatch" in out.stderr and "Traceback" not in out.stderr
    assert list(models.iterdir()) == []  # neither the file nor a .part


def test_http_errors_and_existing_files_are_clear_errors(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        out = _cli("pull", f"{srv.url}/nothing.gguf", "--models-dir", str(models))
        assert out.returncode == 1 and "HTTP 404" in out.stderr
        assert _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models)).returncode == 0
        again = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models))
    assert again.returncode == 1 and "exists" in again.stderr


def test_a_name_that_would_leave_the_models_directory_is_refused(tmp_path: Path) -> None:
    """`--name ../evil.gguf` wrote outside the models directory when the path existed (and
    crashed when not); an absolute name wrote where it said."""
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        for name in ("../evil.gguf", "sub/../../evil.gguf", str(tmp_path / "abs.gguf"), ".."):
            out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(models), "--name", name)
            assert out.returncode == 1, (name, out.stderr)
            assert "must be a plain file name" in " ".join(out.stderr.split()), out.stderr
            assert "Traceback" not in out.stderr
        assert srv.ranges == []  # refused before any download
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["models", "sub"]


def test_a_name_whose_id_another_model_has_is_refused(tmp_path: Path) -> None:
    """`pull --name smol-hf.gguf` beside a folder `smol-hf/` made a file that was never
    served (the folder kept the id), said only in the server's log (found from outside)."""
    models = tmp_path / "models"
    (models / "taken").mkdir(parents=True)
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        out = _cli(
            "pull", f"{srv.url}/model.gguf", "--models-dir", str(models), "--name", "taken.gguf"
        )
        assert srv.ranges == []  # refused before any download
    said = " ".join(out.stderr.split())
    assert out.returncode == 1 and "would share the id 'taken' with taken" in said, out.stderr
    assert sorted(p.name for p in models.iterdir()) == ["taken"]


def test_a_malformed_sha256_is_refused_before_any_download(tmp_path: Path) -> None:
    """It was found out only after the whole download, as a 'mismatch'."""
    with serve_files({"model.gguf": PAYLOAD}) as srv:
        out = _cli("pull", f"{srv.url}/model.gguf", "--models-dir", str(tmp_path / "m"),
                   "--sha256", SHA[:-1])  # fmt: skip
        assert srv.ranges == []
    assert out.returncode == 1
    assert out.stderr == f"error: --sha256 must be 64 hexadecimal digits, not '{SHA[:-1]}'\n"


def test_a_host_that_does_not_exist_is_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name the resolver says does not exist was retried 6 times (~11 s) before failing."""
    import socket

    from llm_router.tools.pull import PullError, pull

    asked: list[str] = []

    def unknown(host: str, *args: object, **kwargs: object) -> None:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(PullError, match=r"no such host \(models\.example\.invalid\)"):
        pull("https://models.example.invalid/m.gguf", tmp_path)
    assert asked == ["models.example.invalid"]


def test_a_half_download_never_appears_as_a_model(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = tmp_path / "models"
    data = smollm2_gguf.read_bytes()
    with serve_files({f"{SMOL}.gguf": data}) as srv:
        srv.stall_after = len(data) // 2
        pull = subprocess.Popen(
            [sys.executable, "-m", "llm_router", "pull", f"{srv.url}/{SMOL}.gguf",
             "--models-dir", str(models)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert srv.stalled.wait(60)
            during = _cli("ls", "--models-dir", str(models))
            assert during.returncode == 0 and SMOL not in during.stdout
            srv.release.set()
            assert pull.wait(60) == 0
        finally:
            pull.kill()
            pull.communicate()
    after = _cli("ls", "--models-dir", str(models))
    assert SMOL in after.stdout and "Q4_1" in after.stdout


def test_pull_from_the_hub_by_quantization(tmp_path: Path) -> None:
    """HF_ENDPOINT points huggingface_hub at the loopback server; its cache is HF_HOME."""
    models = tmp_path / "models"
    files = {"org/tiny-GGUF/tiny-Q4_K_M.gguf": PAYLOAD, "org/tiny-GGUF/tiny-Q8_0.gguf": b"x" * 10}
    with serve_files(files) as srv:
        env = {"HF_ENDPOINT": srv.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        out = _cli("pull", "org/tiny-GGUF:Q4_K_M", "--models-dir", str(models), env=env)
        assert out.returncode == 0, out.stderr
        assert (models / "tiny-Q4_K_M.gguf").read_bytes() == PAYLOAD
        # a file whose bytes differ from the Hub's sha256 is refused
        srv.hub_sha["tiny-Q8_0.gguf"] = "0" * 64
        bad = _cli("pull", "hf.co/org/tiny-GGUF:q8_0", "--models-dir", str(models), env=env)
        assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr
        assert not (models / "tiny-Q8_0.gguf").exists()
        unknown = _cli("pull", "org/tiny-GGUF:Q2_K", "--models-dir", str(models), env=env)
        assert unknown.returncode == 1 and "tiny-Q4_K_M.gguf" in unknown.stderr


def test_an_unreachable_hub_is_one_clear_error(tmp_path: Path) -> None:
    """No network: the error names where the Hub was looked for and why, without a traceback."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    out = _cli("pull", "org/tiny-GGUF:Q4_K_M", "--models-dir", str(tmp_path / "m"), env=env)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "╭" not in out.stderr  # no (rich) traceback
    text = " ".join(out.stderr.split())  # the console wraps long lines
    assert text.startswith(f"error: cannot reach the Hugging Face Hub at {endpoint} (HF_ENDPOINT)")
    assert "Connection refused" in text
    assert len(out.stderr.strip().splitlines()) <= 3  # one message (wrapped at 80 columns)
