"""The built-in model's file: the setting's syntax, the cache, and the download from the Hub.

Downloads run against tests/emulators/hub.py, a loopback stand-in of the Hub and its
CDN, through huggingface_hub itself. huggingface_hub reads HF_ENDPOINT and most of
its switches once, at import, so each test passes the stand-in's URL as `endpoint`
and a cache directory of its own; the switches that would change the download path
(hf_transfer, offline mode) are pinned off per test with monkeypatch. The stand-in
sends no Xet headers, so hf_xet stays out of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import huggingface_hub.utils._http as hf_http
import pytest
from huggingface_hub import constants

from bots.local_model import download
from bots.local_model.download import ModelUnavailable, cached_model_file, ensure_model_file
from core.llm.model_source import DEFAULT_LOCAL_MODEL, ModelSource, parse_model_source
from tests.emulators.hub import HubEmulator

REPO = "herald-test/Tiny-GGUF"
FILE = "tiny-q4_k_m.gguf"
SOURCE = ModelSource.hub(REPO, FILE)
CHUNK = constants.DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes (and so resumes) in these
TOKEN = "hf_herald_test_token"


DEV_FULL = Path("/dev/full")


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def incomplete_files(root: Path) -> list[Path]:
    """huggingface_hub's partial downloads under a cache directory."""
    return sorted(root.rglob("*.incomplete"))


# -- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            DEFAULT_LOCAL_MODEL,
            ModelSource.hub("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
        ),
        ("  owner/repo/model.gguf \n", ModelSource.hub("owner/repo", "model.gguf")),
        ("owner/repo/sub/dir/model.GGUF", ModelSource.hub("owner/repo", "sub/dir/model.GGUF")),
        ("owner/repo@v1.2/model.gguf", ModelSource.hub("owner/repo", "model.gguf", "v1.2")),
        ("o_1/r.e-p_o/m-00001-of-00002.gguf", ModelSource.hub("o_1/r.e-p_o", "m-00001-of-00002.gguf")),
        ("/models/x.gguf", ModelSource.local(Path("/models/x.gguf"))),
        ("./x.gguf", ModelSource.local(Path("x.gguf"))),
        ("../models/x.gguf", ModelSource.local(Path("../models/x.gguf"))),
        ("/my models/a b.gguf", ModelSource.local(Path("/my models/a b.gguf"))),
    ],
)
def test_good_settings(value: str, expected: ModelSource) -> None:
    assert parse_model_source(value, is_file=lambda _: False) == expected


def test_a_home_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_model_source("~/m/x.gguf") == ModelSource.local(tmp_path / "m" / "x.gguf")


def test_an_existing_relative_file_is_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "owner" / "repo").mkdir(parents=True)
    (tmp_path / "owner" / "repo" / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert parse_model_source("owner/repo/x.gguf") == ModelSource.local(Path("owner/repo/x.gguf"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no model given: name a .gguf file path or a Hub file such as owner/repo/model.gguf"),
        ("   \t", "no model given"),
        ("qwen", "'qwen' is neither a .gguf file path nor a Hub file (owner/repo/model.gguf)"),
        (
            "owner/repo",
            "'owner/repo' names a repository, not a file: add the file, e.g. owner/repo/model.gguf",
        ),
        ("owner/repo/file.bin", "'owner/repo/file.bin' is not a GGUF model file: its name must end in .gguf"),
        ("../../etc/passwd", "'../../etc/passwd' is not a GGUF model file: its name must end in .gguf"),
        ("~", "'~' is not a GGUF model file"),
        ("owner/../x.gguf", "'owner/../x.gguf': '..' is not allowed in a Hub name"),
        ("owner/repo/../../x.gguf", "'..' is not allowed"),
        ("owner/my repo/x.gguf", "contains spaces"),
        ("-owner/repo/x.gguf", "'-owner' is not a valid Hub user or repository name"),
        ("owner/repo./x.gguf", "'repo.' is not a valid Hub user or repository name"),
        ("owner/re--po/x.gguf", "'re--po' is not a valid Hub user or repository name"),
        ("owner/repo.git/x.gguf", "a Hub repository name cannot end in .git"),
        (f"owner/{'r' * 97}/x.gguf", "is not a valid Hub user or repository name"),
        ("owner/repo//x.gguf", "an empty part (//) is not a valid file name on the Hub"),
        ("owner/repo/x?.gguf", "'x?.gguf' is not a valid file name on the Hub"),
        ("owner/repo@/x.gguf", "after '@' comes a branch, tag or commit id"),
        (
            "https://huggingface.co/o/r/resolve/main/x.gguf",
            "is a URL: write a Hub file as owner/repo/model.gguf",
        ),
    ],
)
def test_bad_settings_are_refused_in_a_sentence(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_model_source(value, is_file=lambda _: False)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_source_is_a_path_or_a_hub_file() -> None:
    with pytest.raises(ValueError):
        ModelSource()
    with pytest.raises(ValueError):
        ModelSource(path=Path("/x.gguf"), repo_id="o/r", filename="x.gguf")
    with pytest.raises(ValueError):
        ModelSource(repo_id="o/r")
    assert SOURCE.describe() == f"{FILE} from {REPO}"
    assert ModelSource.hub("o/r", "x.gguf", "v2").describe() == "x.gguf from o/r at v2"
    assert ModelSource.local(Path("/m/x.gguf")).describe() == "/m/x.gguf"


# -- downloads ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def plain_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """huggingface_hub as it behaves by default, with a token of the test's own (never
    a real one, which would otherwise be read from the environment or ~/.cache), and
    without its retry back-off's sleeps (recorded instead)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_ENABLE_HF_TRANSFER", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0, 0.0, 0.0, 0.0))
    slept: list[float] = []
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=slept.append))
    return slept


@pytest.fixture
async def hub() -> AsyncIterator[HubEmulator]:
    async with HubEmulator() as emulator:
        yield emulator


class Announcements:
    """Records each announced line with how many file GETs the stand-in had seen by then."""

    def __init__(self, hub: HubEmulator) -> None:
        self.hub = hub
        self.lines: list[str] = []
        self.file_gets_before: list[int] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.file_gets_before.append(len(self.hub.file_requests("GET")))


async def fetch(
    source: ModelSource,
    cache: Path,
    endpoint: str,
    announce: Callable[[str], None] = lambda _: None,
) -> Path:
    return await asyncio.to_thread(
        ensure_model_file, source, announce=announce, cache_dir=cache, endpoint=endpoint
    )


async def test_the_first_download_is_announced_once_before_the_file_is_fetched(
    hub: HubEmulator, tmp_path: Path
) -> None:
    data = payload(1_530_000)
    hub.add_repo(REPO, {FILE: data, "README.md": b"# Tiny\n"})
    cache = tmp_path / "hub-cache"
    said = Announcements(hub)

    path = await fetch(SOURCE, cache, hub.url, said)

    assert path.read_bytes() == data
    assert path.is_relative_to(cache)
    assert len(said.lines) == 1
    assert said.file_gets_before == [0]
    line = said.lines[0]
    assert "\n" not in line
    for part in (FILE, REPO, "1.5 MB", "licence apache-2.0", str(cache), "HERALD_TGI_URL"):
        assert part in line, part
    assert not [r for r in hub.requests if r.site == "cdn" and r.authorized]  # the token stays home


async def test_an_unknown_licence_is_said_with_the_model_page(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {FILE: payload(2000)}, license=None)
    said = Announcements(hub)
    await fetch(SOURCE, tmp_path, hub.url, said)
    assert f"licence unknown, see {hub.url}/{REPO}" in said.lines[0]
    assert "2.0 kB" in said.lines[0]


async def test_a_pinned_revision_is_downloaded_and_named(hub: HubEmulator, tmp_path: Path) -> None:
    repo = hub.add_repo(REPO, {FILE: payload(3000)})
    said = Announcements(hub)
    path = await fetch(ModelSource.hub(REPO, FILE, repo.commit), tmp_path, hub.url, said)
    assert path.read_bytes() == payload(3000)
    assert f"at {repo.commit}" in said.lines[0]


async def test_a_renamed_repository_is_followed(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {FILE: payload(6000)})
    hub.renamed["herald-test/Old-Name"] = REPO
    said = Announcements(hub)
    old = ModelSource.hub("herald-test/Old-Name", FILE)
    path = await fetch(old, tmp_path, hub.url, said)
    assert path.read_bytes() == payload(6000)
    assert "licence apache-2.0" in said.lines[0]  # the model info followed the redirect too
    assert cached_model_file(old, cache_dir=tmp_path) == path


async def test_progress_is_drawn_on_stderr(
    hub: HubEmulator, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # tqdm draws on a terminal only (not into log files); the captured stderr plays one.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    hub.add_repo(REPO, {FILE: payload(CHUNK + 4321)})
    await fetch(SOURCE, tmp_path, hub.url)
    err = capfd.readouterr().err
    assert FILE in err
    assert "100%" in err
    assert "Traceback" not in err


async def test_a_cut_connection_is_resumed_with_a_range_request(hub: HubEmulator, tmp_path: Path) -> None:
    data = payload(2 * CHUNK + 12_345)
    hub.add_repo(REPO, {FILE: data})
    # The whole first chunk reaches the disk; what came of the second is lost with the connection.
    hub.cut_after = CHUNK + 5000
    said = Announcements(hub)

    path = await fetch(SOURCE, tmp_path, hub.url, said)

    assert path.read_bytes() == data
    gets = hub.file_requests("GET")
    assert [r.range for r in gets] == [None, f"bytes={CHUNK}-"]
    assert len(said.lines) == 1
    assert incomplete_files(tmp_path) == []


async def test_a_download_that_keeps_breaking_off_is_not_taken_for_the_file(
    hub: HubEmulator, tmp_path: Path
) -> None:
    data = payload(2 * CHUNK + 100)
    hub.add_repo(REPO, {FILE: data})
    hub.cut_after, hub.cuts = CHUNK + 10, 5

    with pytest.raises(ModelUnavailable) as caught:
        await fetch(SOURCE, tmp_path, hub.url)

    assert "the download broke off 5 times; run Herald again to resume it" in str(caught.value)
    assert cached_model_file(SOURCE, cache_dir=tmp_path) is None
    [partial] = incomplete_files(tmp_path)
    assert partial.stat().st_size == CHUNK
    assert [r.range for r in hub.file_requests("GET")] == [None] + [f"bytes={CHUNK}-"] * 4

    # The next run picks up where this one stopped.
    path = await fetch(SOURCE, tmp_path, hub.url)
    assert path.read_bytes() == data
    assert hub.file_requests("GET")[-1].range == f"bytes={CHUNK}-"


async def test_the_second_call_uses_the_cache_without_the_network(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {FILE: payload(5000)})
    first = await fetch(SOURCE, tmp_path, hub.url)
    assert cached_model_file(SOURCE, cache_dir=tmp_path) == first
    hub.requests.clear()
    said = Announcements(hub)

    second = await fetch(SOURCE, tmp_path, hub.url, said)
    offline = await fetch(SOURCE, tmp_path, closed_port_url(), said)

    assert second == offline == first
    assert hub.requests == []
    assert said.lines == []


async def test_a_corrupt_download_is_deleted_not_used(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {FILE: payload(4000)})
    hub.corrupt = True
    with pytest.raises(ModelUnavailable, match="the downloaded file is corrupt"):
        await fetch(SOURCE, tmp_path, hub.url)
    assert cached_model_file(SOURCE, cache_dir=tmp_path) is None

    hub.corrupt = False
    assert (await fetch(SOURCE, tmp_path, hub.url)).read_bytes() == payload(4000)


# -- failures -------------------------------------------------------------------------------


def closed_port_url() -> str:
    """A loopback address where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_an_unreachable_hub_is_said_plainly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], plain_huggingface_hub: list[float]
) -> None:
    said: list[str] = []
    endpoint = closed_port_url()
    with pytest.raises(ModelUnavailable) as caught:
        await fetch(SOURCE, tmp_path, endpoint, said.append)
    message = str(caught.value)
    assert f"cannot reach the Hugging Face Hub at {endpoint} (connection refused)" in message
    assert "HERALD_LOCAL_MODEL" in message and "HERALD_TGI_URL" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert said == []
    assert plain_huggingface_hub  # huggingface_hub retried (its back-off, skipped here)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("source", "gated", "expected"),
    [
        pytest.param(
            ModelSource.hub("herald-test/missing", FILE),
            False,
            "there is no model repository herald-test/missing on the Hub (or it is private)",
            id="missing-repo",
        ),
        pytest.param(
            ModelSource.hub(REPO, "other.gguf"),
            False,
            f"{REPO} has no file other.gguf",
            id="missing-file",
        ),
        pytest.param(
            ModelSource.hub(REPO, FILE, "v9"),
            False,
            f"{REPO} has no revision 'v9'",
            id="missing-revision",
        ),
        pytest.param(
            SOURCE,
            True,
            f"{REPO} is gated: accept its terms at {{url}}/{REPO}, then log in with `hf auth login` "
            "or set HF_TOKEN",
            id="gated",
        ),
    ],
)
async def test_what_the_hub_refuses_is_said_plainly(
    hub: HubEmulator,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    source: ModelSource,
    gated: bool,
    expected: str,
) -> None:
    hub.add_repo(REPO, {FILE: payload(1000)}, gated=gated)
    said: list[str] = []
    with pytest.raises(ModelUnavailable) as caught:
        await fetch(source, tmp_path, hub.url, said.append)
    assert f"The built-in model is unavailable: {expected.format(url=hub.url)}." in str(caught.value)
    assert said == []
    assert hub.file_requests("GET") == []
    assert "Traceback" not in capfd.readouterr().err


async def test_a_hub_outage_is_said_plainly(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo(REPO, {FILE: payload(1000)})
    hub.outage = 503
    with pytest.raises(ModelUnavailable, match="the Hub answered HTTP 503"):
        await fetch(SOURCE, tmp_path, hub.url)


def plant_full_disk(cache: Path, data: bytes) -> None:
    """Make the download's partial file /dev/full, where every write fails with ENOSPC."""
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete").symlink_to(DEV_FULL)


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")
async def test_a_full_disk_is_said_plainly(hub: HubEmulator, tmp_path: Path) -> None:
    data = payload(CHUNK + 1)
    hub.add_repo(REPO, {FILE: data})
    plant_full_disk(tmp_path, data)
    with pytest.raises(ModelUnavailable, match=re.escape(f"the disk is full at {tmp_path} (10 MB needed)")):
        await fetch(SOURCE, tmp_path, hub.url)


def test_a_missing_local_file_is_said_plainly(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelUnavailable, match=f"the model file {missing} does not exist"):
        ensure_model_file(ModelSource.local(missing), announce=pytest.fail)
    with pytest.raises(ModelUnavailable, match="is not a file"):
        ensure_model_file(ModelSource.local(tmp_path), announce=pytest.fail)
    present = tmp_path / "here.gguf"
    present.write_bytes(b"GGUF")
    assert ensure_model_file(ModelSource.local(present), announce=pytest.fail) == present
    assert cached_model_file(ModelSource.local(present)) == present
    assert cached_model_file(ModelSource.local(missing)) is None


# -- the stand-in itself --------------------------------------------------------------------


async def test_the_stand_in_answers_like_the_hub(hub: HubEmulator) -> None:
    data = payload(1000)
    repo = hub.add_repo(REPO, {FILE: data})
    async with aiohttp.ClientSession() as http:
        head = await http.head(f"{hub.url}/{REPO}/resolve/main/{FILE}", allow_redirects=False)
        assert head.status == 302
        assert head.headers["X-Repo-Commit"] == repo.commit
        assert head.headers["X-Linked-Size"] == "1000"
        location = head.headers["Location"]
        assert location.startswith(hub.cdn_url)

        ranged = await http.get(location, headers={"Range": "bytes=990-"})
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == "bytes 990-999/1000"
        assert await ranged.read() == data[990:]
        beyond = await http.get(location, headers={"Range": "bytes=1000-"})
        assert beyond.status == 416
        with_token = await http.get(location, headers={"Authorization": f"Bearer {TOKEN}"})
        assert with_token.status == 400
        unsigned = await http.get(location.split("?")[0])
        assert unsigned.status == 403

        missing = await http.head(f"{hub.url}/{REPO}/resolve/main/nope.gguf")
        assert (missing.status, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
        assert missing.headers["X-Repo-Commit"] == repo.commit
        anonymous = await http.head(f"{hub.url}/someone/else/resolve/main/{FILE}")
        assert (anonymous.status, anonymous.headers["X-Error-Code"]) == (401, "RepoNotFound")
