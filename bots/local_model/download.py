"""The built-in model's GGUF file: found on the disk, or fetched once from the Hugging Face Hub.

A Hub file goes into huggingface_hub's usual cache (``~/.cache/huggingface/hub``,
or wherever ``HF_HOME``/``HF_HUB_CACHE`` say) and is found there afterwards with
no network at all. Before a download starts, one line says what is coming, how
big it is, its licence and where it goes, so nobody is surprised by half a
gigabyte. Any failure becomes `ModelUnavailable` with a sentence for a person;
the details go to the ``herald.model`` log.

Everything here blocks: callers run it in a thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from core.llm.model_source import ModelSource

__all__ = ["ModelUnavailable", "cached_model_file", "ensure_model_file"]

log = logging.getLogger("herald.model")

#: Seconds to wait before each new attempt at a download that broke off. Each attempt
#: resumes from what the last one wrote (huggingface_hub keeps it as ``*.incomplete``).
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
#: How long the Hub may take to answer a metadata request.
METADATA_TIMEOUT = 10.0

_WHAT_TO_DO = "Set HERALD_LOCAL_MODEL to a .gguf file you have, or HERALD_TGI_URL to a model server."
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Breaks in the transfer that a new attempt can resume (a cut mid-body is a ChunkedEncodingError).
_BROKEN_OFF = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)
_NOT_TRANSIENT = (requests.exceptions.SSLError, requests.exceptions.ProxyError)


class ModelUnavailable(Exception):
    """The model file cannot be had. The message says why and what to do instead, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"The built-in model is unavailable: {reason}. {_WHAT_TO_DO}")
        self.reason = reason


def cached_model_file(source: ModelSource, *, cache_dir: Path | None = None) -> Path | None:
    """The model file if it is already here; never touches the network.

    A Hub file counts only once complete: huggingface_hub links it into the cache's
    snapshot only after the whole file arrived, under its final name.
    """
    if source.path is not None:
        return source.path if source.path.is_file() else None
    repo_id, filename = _hub_file(source)
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=source.revision)
    except HFValidationError:  # a name the Hub cannot have is in no cache (ensure_model_file says why)
        return None
    return Path(found) if isinstance(found, str) else None


def ensure_model_file(
    source: ModelSource,
    *,
    announce: Callable[[str], None],
    cache_dir: Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """The model file, downloaded first if it is a Hub file not yet in the cache.

    `announce` gets one line before a download starts (never when the file is cached).
    `cache_dir` and `endpoint` override huggingface_hub's defaults, for tests.
    """
    if source.path is not None:
        return _local_file(source.path)
    cached = cached_model_file(source, cache_dir=cache_dir)
    if cached is not None:
        return cached
    hub = _Download(source, cache_dir, (endpoint or constants.ENDPOINT).rstrip("/"))
    size = hub.size()
    announce(hub.announcement(size, hub.licence()))
    return hub.fetch(size)


def _local_file(path: Path) -> Path:
    """The path, once it is known to be a file Herald can open."""
    try:
        if not path.exists():
            raise ModelUnavailable(f"the model file {path} does not exist")
        if not path.is_file():
            raise ModelUnavailable(f"{path} is not a file")
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ModelUnavailable(f"cannot read the model file {path} ({exc.strerror or exc})") from None
    return path


def _hub_file(source: ModelSource) -> tuple[str, str]:
    if source.repo_id is None or source.filename is None:
        raise ValueError(f"{source} is not a Hub file")
    return source.repo_id, source.filename


@dataclass(frozen=True)
class _Download:
    """One Hub file's trip into the cache: its size, its licence, its bytes."""

    source: ModelSource
    cache_dir: Path | None
    endpoint: str

    @property
    def repo_id(self) -> str:
        return _hub_file(self.source)[0]

    @property
    def filename(self) -> str:
        return _hub_file(self.source)[1]

    @property
    def page(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else Path(constants.HF_HUB_CACHE)

    def size(self) -> int | None:
        """The file's size from the Hub; this is also where a wrong name or no network shows."""
        url = hf_hub_url(self.repo_id, self.filename, revision=self.source.revision, endpoint=self.endpoint)
        try:
            metadata = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT, endpoint=self.endpoint)
        except Exception as exc:
            raise self._unavailable(exc, self._reason(exc, None, reaching=True)) from None
        return metadata.size

    def licence(self) -> str | None:
        """The licence the model card declares (or its ``license:`` tag); None if unknown.

        Only informative: a model-info failure does not stop the download.
        """
        try:
            info = HfApi(endpoint=self.endpoint).model_info(
                self.repo_id, revision=self.source.revision, timeout=METADATA_TIMEOUT
            )
        except Exception as exc:
            log.info("no licence for %s from the Hub: %s", self.repo_id, _detail(exc))
            return None
        card = info.card_data
        named = card.get("license") if card is not None else None
        if named == "other" and card is not None:
            named = card.get("license_name") or named
        if not named:
            tags = [t for t in info.tags or [] if t.startswith("license:")]
            named = tags[0].removeprefix("license:") if tags else None
        if not named:
            return None
        if isinstance(named, list):
            named = ", ".join(map(str, named))
        return _one_line(named)[:80]

    def announcement(self, size: int | None, licence: str | None) -> str:
        what = f"{self.filename} from {self.repo_id}"
        if self.source.revision != "main":
            what += f" at {self.source.revision}"
        shown_size = _human_size(size) if size is not None else "size unknown"
        shown_licence = f"licence {licence}" if licence else f"licence unknown, see {self.page}"
        return _one_line(
            f"Downloading the built-in model {what} ({shown_size}, {shown_licence}) once, into the "
            f"Hugging Face cache at {self.cache}. To use a model server instead, set HERALD_TGI_URL."
        )

    def fetch(self, size: int | None) -> Path:
        """Download (resuming after breaks), check the bytes, and return the cached file."""
        try:
            path = self._download_resuming()
            _check_digest(path)
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise self._unavailable(exc, self._reason(exc, size, reaching=False)) from None
        log.info("downloaded %s to %s", self.source.describe(), path)
        return path

    def _download_resuming(self) -> Path:
        for delay in (*RETRY_DELAYS, None):
            try:
                return Path(
                    hf_hub_download(
                        self.repo_id,
                        self.filename,
                        revision=self.source.revision,
                        cache_dir=self.cache_dir,
                        endpoint=self.endpoint,
                    )
                )
            except _BROKEN_OFF as exc:
                if delay is None or isinstance(exc, _NOT_TRANSIENT):
                    raise
                log.warning(
                    "the download of %s broke off (%s); resuming in %g s",
                    self.source.describe(),
                    _detail(exc),
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _unavailable(self, exc: BaseException, reason: str) -> ModelUnavailable:
        log.warning("cannot get %s: %s (%s)", self.source.describe(), reason, _detail(exc))
        log.debug("the download's error in full", exc_info=exc)
        return ModelUnavailable(reason)

    def _reason(self, exc: BaseException, size: int | None, *, reaching: bool) -> str:
        """A few words on what went wrong. Order matters: the Hub's errors are OSErrors too."""
        if isinstance(exc, OfflineModeIsEnabled) or (
            isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
        ):
            return "HF_HUB_OFFLINE is set and the model is not in the cache yet"
        if isinstance(exc, HFValidationError):
            return f"{self.repo_id!r} is not a valid Hub repository name"
        if isinstance(exc, GatedRepoError):
            return (
                f"{self.repo_id} is gated: accept its terms at {self.page}, then log in "
                "with `hf auth login` or set HF_TOKEN"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return f"there is no model repository {self.repo_id} on the Hub (or it is private)"
        if isinstance(exc, RevisionNotFoundError):
            return f"{self.repo_id} has no revision {self.source.revision!r}"
        if isinstance(exc, LocalEntryNotFoundError):  # the HEAD failed: its error is the cause
            cause = exc.__cause__
            return self._reason(cause, size, reaching=True) if cause else self._unreachable(exc)
        if isinstance(exc, EntryNotFoundError):
            return f"{self.repo_id} has no file {self.filename}"
        if isinstance(exc, DisabledRepoError):
            return f"{self.repo_id} has been disabled on the Hub"
        if isinstance(exc, requests.exceptions.HTTPError):  # HfHubHTTPError, or a 5xx after retries
            return _http_reason(exc)
        if isinstance(exc, FileMetadataError):
            return f"{self.endpoint} does not answer like the Hugging Face Hub (a proxy in the way?)"
        if isinstance(exc, requests.exceptions.RequestException):
            return self._unreachable(exc) if reaching else _transfer_reason(exc)
        if isinstance(exc, OSError):
            return self._disk_reason(exc, size)
        return f"the download failed ({type(exc).__name__})"

    def _unreachable(self, exc: BaseException) -> str:
        text = str(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            why = "TLS failed: a proxy, or a wrong clock?"
        elif isinstance(exc, requests.exceptions.ProxyError):
            why = "the proxy refused"
        elif isinstance(exc, requests.exceptions.Timeout):
            why = "no answer in time"
        elif "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
            why = "name lookup failed: no network?"
        elif "refused" in text:
            why = "connection refused"
        else:
            why = "no network?"
        return f"cannot reach the Hugging Face Hub at {self.endpoint} ({why})"

    def _disk_reason(self, exc: OSError, size: int | None) -> str:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            need = f" ({_human_size(size)} needed)" if size is not None else ""
            return f"the disk is full at {self.cache}{need}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write to {self.cache} ({exc.strerror})"
        if "Consistency check failed" in str(exc):
            return "the download came back incomplete; run Herald again to retry it"
        return f"cannot store the model in {self.cache} ({exc.strerror or type(exc).__name__})"


def _http_reason(exc: requests.exceptions.HTTPError) -> str:
    status = exc.response.status_code if exc.response is not None else None
    if status == 401:
        return "the Hub refused the token (HTTP 401): check HF_TOKEN or `hf auth login`"
    if status == 403:
        return "the Hub refused access (HTTP 403)"
    if status == 429:
        return "the Hub is rate-limiting this address (HTTP 429); try again later"
    return f"the Hub answered HTTP {status}" if status else "the Hub gave an error"


def _transfer_reason(exc: requests.exceptions.RequestException) -> str:
    if isinstance(exc, _BROKEN_OFF):
        tries = len(RETRY_DELAYS) + 1
        return f"the download broke off {tries} times; run Herald again to resume it"
    return f"the download failed ({type(exc).__name__})"


def _check_digest(path: Path) -> None:
    """Compare an LFS file with its sha256, which the Hub gave as its ETag and the cache
    uses as the blob's name: a resumed download must be the same bytes, not just as many."""
    blob = path.resolve()
    if not _SHA256.fullmatch(blob.name):
        return  # no symlinks here (the cache copies), or a small file stored in git
    with blob.open("rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != blob.name:
        log.warning("%s has sha256 %s, not %s as the Hub says: deleting it", path, actual, blob.name)
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise ModelUnavailable(
            "the downloaded file is corrupt (its sha256 does not match the Hub's); it was "
            "deleted, run Herald again to download it afresh"
        )


def _human_size(size: int) -> str:
    """Bytes in decimal units, as the Hub's pages and the progress bar show them: "491 MB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{size} bytes"


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _detail(exc: BaseException) -> str:
    """An error's own words for the log: requests nests urllib3's, which nests the socket's."""
    inner = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    return f"{type(exc).__name__}: {_one_line(text)}"
