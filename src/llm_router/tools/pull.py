"""`pull`: put a model into the models directory from an http(s) URL or the Hugging Face Hub.

A download is written to `.<name>.part` in the models directory (dot files are never models,
so a half download never appears in `GET /models`), resumed from where it stopped with an HTTP
Range request (by the next `pull`, or at once when the connection drops mid-way), checked
against a sha256 (given with `--sha256`, or the Hub's LFS metadata) and by its content (a
model of a format this router reads, whole), and only then renamed to its name: the rename is
atomic, so the watcher sees the whole file or nothing. A file that fails a check is deleted
and the pull fails.

One pull at a time writes a `.part`: it holds an exclusive lock on it (a second pull of the
same name is refused, where both appended to one file). A resume asks for the rest only of
the same file: `.<name>.part.json` keeps the URL and the server's validator (a strong ETag,
else Last-Modified), sent as `If-Range`, so a file changed on the server meanwhile is
downloaded again from the start; a `.part` of unknown origin, or from a server that gave no
validator, is started again too.

Hub sources go through `huggingface_hub` (the `hub` extra): `hf_hub_download` honours
`HF_ENDPOINT`, `HF_TOKEN` and its cache (resuming there itself); the file is then hashed and
linked (or copied) into the models directory the same way."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from ..errors import RouterError

__all__ = ["HubSource", "Progress", "PullError", "hub_file", "parse_source", "pull", "pull_url"]

CHUNK = 1 << 20
RETRIES = 5
# (bytes so far, total or None): called as bytes arrive.
Progress = Callable[[int, int | None], None]


class PullError(RouterError):
    pass


@dataclass(frozen=True, slots=True)
class HubSource:
    repo: str  # org/name
    filename: str | None = None
    quant: str | None = None  # e.g. Q4_K_M: the .gguf whose name has it
    revision: str | None = None


_REPO = r"[\w.-]+/[\w.-]+"


def parse_source(text: str) -> str | HubSource:
    """An https:// or http:// URL as itself; else a Hub reference: `org/repo/file.gguf`,
    `org/repo:Q4_K_M` (Ollama's and llama.cpp's `-hf` form), `org/repo@revision/...`, with an
    optional `hf://`, `hf.co/` or `huggingface.co/` prefix."""
    if re.match(r"^https?://", text) and not re.match(r"^https?://(hf\.co|huggingface\.co)/", text):
        return text
    ref = re.sub(r"^(hf://|https?://|)(hf\.co/|huggingface\.co/)?", "", text)
    m = re.fullmatch(rf"({_REPO})(?:@([\w.-]+))?(?::([\w.-]+)|/(.+))?", ref)
    if m is None:
        raise PullError(
            f"{text!r} is neither a URL nor a Hub reference (org/repo/file.gguf, org/repo:Q4_K_M)"
        )
    repo, revision, quant, filename = m.groups()
    if filename and filename.startswith("resolve/"):  # a pasted download link
        revision, _, filename = filename.removeprefix("resolve/").partition("/")
    return HubSource(repo, filename or None, quant, revision)


def hub_file(source: HubSource, files: list[str]) -> str:
    """The file of `source` among the repository's `files`: its filename, else the one .gguf
    whose name has the quantization (case-insensitive), else the only .gguf there is."""
    if source.filename:
        if source.filename not in files:
            raise PullError(f"{source.repo} has no file {source.filename!r}")
        return source.filename
    every = [f for f in files if f.lower().endswith(".gguf")]
    found = every
    if source.quant:
        q = re.escape(source.quant.lower())
        found = [f for f in every if re.search(rf"(^|[^a-z0-9]){q}([^a-z0-9_]|$)", f.lower())]
    if len(found) == 1:
        return found[0]
    choices = ", ".join(every[:20]) or "none"
    if source.quant and not found:
        raise PullError(f"{source.repo} has no .gguf of {source.quant}; its .gguf files: {choices}")
    raise PullError(
        f"{source.repo}: name one file (org/repo/FILE) or a quantization (org/repo:Q4_K_M); "
        f"its .gguf files: {choices}"
    )


def _name_of(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    if not name or name.startswith("."):
        raise PullError(f"cannot tell a file name from {url}; give --name")
    return name


def _check_id_free(target: Path) -> None:
    """PullError when another entry of the models directory has the id `target` would get
    (`x.gguf` beside a folder `x/`): only one of them would be served, the other in silence."""
    model_id = target.stem
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name == target.name:
            continue
        if (entry.name if entry.is_dir() else entry.stem) == model_id:
            raise PullError(
                f"{target.name} would share the id {model_id!r} with {entry.name}, which is in "
                f"{target.parent}, and only one of them would be served: give another --name"
            )


def pull_url(
    url: str,
    models_dir: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    headers: dict[str, str] | None = None,
) -> Path:
    """Download `url` into `models_dir/name`, resuming a `.name.part` left by an earlier try.
    Raises PullError (the partial file kept, to resume) on HTTP errors, and on a sha256
    mismatch (the file deleted)."""
    import httpx

    name = name or _name_of(url)
    if name != Path(name).name or name in (".", "..") or name.startswith(".") or "\\" in name:
        raise PullError(
            f"--name {name!r} must be a plain file name (the file goes in {models_dir})"
        )
    target, part = models_dir / name, models_dir / f".{name}.part"
    if target.exists():
        raise PullError(f"{target} exists; `llm-router rm` it first")
    _check_id_free(target)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PullError(f"cannot make the models directory {models_dir}: {exc.strerror}") from None
    with (
        _locked(part),
        httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0), headers=headers) as http,
    ):
        if target.exists():  # the pull that held the lock made it meanwhile
            raise PullError(f"{target} exists; `llm-router rm` it first")
        attempt = 0  # tries in a row that brought nothing: one that did starts afresh
        while True:
            had = part.stat().st_size if part.exists() else 0
            try:
                _fetch(http, url, part, progress)
                break
            except (httpx.TransportError, _Incomplete, _Transient) as exc:
                if isinstance(exc, httpx.ConnectError) and _UNKNOWN_HOST in str(exc):
                    host = urlparse(url).hostname
                    raise PullError(f"{url}: no such host ({host})") from None
                attempt = 0 if part.exists() and part.stat().st_size > had else attempt + 1
                if attempt > RETRIES:
                    raise PullError(
                        f"download of {url} failed after {RETRIES + 1} tries ({exc}); "
                        "run pull again to resume"
                    ) from None
                time.sleep(min(2.0**attempt * 0.2, 5.0))
        _verify(part, sha256)
        _check_model(part, name, url)
        os.replace(part, target)
        _origin(part).unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[None]:
    """Hold an exclusive lock on `part` (made if missing) while the block runs; PullError at
    once when another pull holds it."""
    with part.open("ab") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(
                f"another pull is writing {part.name[1:-5]} (it holds {part}); wait for it to end"
            ) from None
        try:
            yield
        finally:  # nothing to resume from: no litter (a 404, a refused name)
            if part.exists() and part.stat().st_size == 0:
                _discard(part)


def _check_model(part: Path, name: str, url: str) -> None:
    """Delete the download and raise PullError unless it is a whole model of a format this
    router reads, by content (as discovery will read it under `name`)."""
    from ..errors import InvalidModelFile
    from ..formats.detect import describe

    try:
        found = describe(part, Path(name).suffix)
        why = None if found is not None else "it is no model file this router reads"
    except InvalidModelFile as exc:
        why = exc.message.removeprefix(f"{part}: ")
    if why is not None:
        _discard(part)
        raise PullError(f"{url} is not a usable model ({why}); the download was deleted")


# getaddrinfo's EAI_NONAME: the name does not exist (no retry helps; EAI_AGAIN, a resolver
# that could not answer, is retried as any transport error)
_UNKNOWN_HOST = "Name or service not known"


class _Incomplete(Exception):
    pass


class _Transient(Exception):
    """A 5xx a retry may cure (a CDN's 502/503/504, a server restarting)."""


def _origin(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    """A download that is to be started again, and where it came from."""
    part.unlink(missing_ok=True)
    _origin(part).unlink(missing_ok=True)


def _resume_headers(url: str, part: Path) -> dict[str, str] | None:
    """The Range (and If-Range) headers that ask for the rest of `part`, or None when it
    must start again: empty, or of another URL or an unknown origin."""
    have = part.stat().st_size if part.exists() else 0
    try:
        origin = json.loads(_origin(part).read_text())
    except (OSError, ValueError):
        origin = None
    if not have or not isinstance(origin, dict) or origin.get("url") != url:
        return None
    validator = origin.get("etag") or origin.get("last_modified")
    if not validator:  # nothing tells the same file from a new one: splicing them would
        return None  # make a well-formed model of neither
    return {"Range": f"bytes={have}-", "If-Range": validator}  # changed: a 200, all of it


def _fetch(http: httpx.Client, url: str, part: Path, progress: Progress | None) -> None:
    headers = _resume_headers(url, part)
    have = part.stat().st_size if headers else 0
    with http.stream("GET", url, headers=headers or {}) as res:
        if res.status_code == 416 and have:  # nothing past what we have: it is complete
            return
        if res.status_code in (500, 502, 503, 504):
            raise _Transient(f"HTTP {res.status_code} {res.reason_phrase}")
        if res.status_code not in (200, 206):
            raise PullError(f"{url}: HTTP {res.status_code} {res.reason_phrase}")
        if res.status_code == 200:
            have = 0  # the server ignored the Range, or the file changed: start again
            weak = res.headers.get("etag", "").startswith("W/")  # If-Range needs a strong one
            origin = {
                "url": url,
                "etag": None if weak else res.headers.get("etag"),
                "last_modified": res.headers.get("last-modified"),
            }
            _origin(part).write_text(json.dumps(origin))
        length = res.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        with part.open("ab" if have else "wb") as out:
            got = have
            for chunk in res.iter_bytes():  # as it comes: a cut loses nothing received
                out.write(chunk)
                got += len(chunk)
                if progress:
                    progress(got, total)
        if total is not None and got < total:
            raise _Incomplete(f"{got} of {total} bytes")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = _sha256(path)
    if actual != expected.lower():
        _discard(path)
        raise PullError(
            f"sha256 mismatch: expected {expected.lower()}, got {actual}; the download was deleted"
        )


def pull_hub(
    source: HubSource,
    models_dir: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download from the Hub with huggingface_hub (its cache, HF_ENDPOINT, HF_TOKEN), check
    the sha256 (given, else the LFS metadata) and link or copy it into `models_dir`."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise PullError(
            "pulling from the Hugging Face Hub needs the `hub` extra: "
            "pip install 'llm-runner-router[hub]'"
        ) from None
    try:
        info = HfApi().model_info(source.repo, revision=source.revision, files_metadata=True)
        siblings = {s.rfilename: s for s in info.siblings or []}
        filename = hub_file(source, list(siblings))
        lfs = siblings[filename].lfs
        expected = sha256 or (lfs.sha256 if lfs is not None else None)
        target = models_dir / Path(filename).name
        if target.exists():
            raise PullError(f"{target} exists; `llm-router rm` it first")
        _check_id_free(target)
        cached = Path(hf_hub_download(source.repo, filename, revision=source.revision))
    except HfHubHTTPError as exc:  # the Hub answered: an HTTP error (404, 401...)
        raise PullError(f"{source.repo}: {exc}") from None
    except _unreachable() as exc:
        raise PullError(_no_hub(exc)) from None
    if expected and _sha256(cached) != expected.lower():
        raise PullError(f"sha256 mismatch for {filename} in the Hub cache ({cached})")
    if progress:
        size = cached.stat().st_size
        progress(size, size)
    models_dir.mkdir(parents=True, exist_ok=True)
    part = models_dir / f".{target.name}.part"
    part.unlink(missing_ok=True)
    try:
        os.link(cached.resolve(), part)
    except OSError:
        shutil.copyfile(cached, part)
    _check_model(part, target.name, f"{source.repo}/{filename}")
    os.replace(part, target)
    return target


def _unreachable() -> tuple[type[BaseException], ...]:
    """The errors that say the Hub did not answer, whichever HTTP client this
    huggingface_hub uses (requests before 1.0, httpx, httpx2 from 2.0; imported by then):
    its transport errors (refused, unresolved, timed out, TLS), and the builtin
    ConnectionError (HF_HUB_OFFLINE's OfflineModeIsEnabled); and LocalEntryNotFoundError (no
    answer and no cached copy: in huggingface_hub.errors from 0.25, an HfHubHTTPError before)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("huggingface_hub.errors", ("LocalEntryNotFoundError",)),
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        found = sys.modules.get(module)
        errors += [e for n in names if isinstance(e := getattr(found, n, None), type)]
    return tuple(errors)


def _no_hub(exc: BaseException) -> str:
    """One line: where the Hub was looked for, and why it did not answer."""
    from huggingface_hub import constants

    reason = exc.__cause__ or exc  # a LocalEntryNotFoundError's cause is the network error
    via = " (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else ""
    return (
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT}{via}: "
        f"{str(reason) or type(reason).__name__}"
    )


def pull(
    text: str,
    models_dir: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise PullError(f"--sha256 must be 64 hexadecimal digits, not {sha256!r}")
    source = parse_source(text)
    if isinstance(source, HubSource):
        return pull_hub(source, models_dir, sha256=sha256, progress=progress)
    return pull_url(source, models_dir, name=name, sha256=sha256, progress=progress)
