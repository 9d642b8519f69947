"""A loopback stand-in of the Hugging Face Hub's file and model-info endpoints.

It answers what ``huggingface_hub`` asks when it downloads one file, the way
huggingface.co answers it, so that Herald's download code is tested against real
HTTP instead of mocks:

* ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{path}``: an LFS file (``*.gguf``,
  ``*.bin``, ``*.safetensors``) answers ``302`` to a signed URL on a separate CDN host,
  with ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's sha256), ``X-Linked-Size`` and
  an ``ETag`` of the git pointer; a small file answers ``200`` itself (``ETag``: its git
  blob id). Errors carry the Hub's ``X-Error-Code``/``X-Error-Message``: 401
  ``RepoNotFound`` for an unknown (or private) repository without a token and 404 with
  one, 401/403 ``GatedRepo``, 404 ``RevisionNotFound`` and ``EntryNotFound`` (the
  latter with ``X-Repo-Commit``, which the client caches). A renamed repository's old
  name answers ``307`` with a relative ``Location`` (the client follows only those).
* The CDN (another port, so another host to the client, which then drops its token):
  the signed URL only, ``Range`` (206/416) as S3 answers it, ``Content-Disposition``
  with the file name, and 400 for a request that also sends ``Authorization``, as S3
  does for a presigned URL.
* ``GET /api/models/{owner}/{repo}`` and ``…/revision/{rev}``: the model's info JSON
  with ``cardData.license`` and a ``license:…`` tag; gated repositories' info is public.

Knobs for tests: repositories and their files (`add_repo`: licence, gated),
`renamed` (old names redirect to new ones), `cut_after` (close the connection at
that byte of the file on the next `cuts` file GETs), `corrupt` (the CDN flips a
byte), `outage` (every Hub request answers that status) and `requests`, a log of
every request (site, method, path, Range, whether a token came along).
Xet storage is not emulated: files answer as LFS files did before Xet, so the client
downloads them over plain HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["HubEmulator", "HubRepo", "RecordedRequest", "git_blob_id"]

LFS_SUFFIXES = (".gguf", ".bin", ".safetensors")
# What huggingface.co lets browsers read, from its real responses.
_EXPOSE = (
    "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,"
    "Accept-Ranges,Content-Range,X-Linked-Size,X-Linked-ETag,X-Xet-Hash"
)
_URL_LIFETIME = 3600
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

Site = Literal["hub", "cdn"]


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's content: the Hub's ETag for a file stored in git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    site: Site
    method: str
    path: str
    range: str | None
    authorized: bool


@dataclass
class HubRepo:
    """A model repository: its files at one commit, its licence, whether it is gated."""

    repo_id: str
    files: dict[str, bytes]
    license: str | None = "apache-2.0"
    gated: bool = False
    commit: str = field(default_factory=lambda: secrets.token_hex(20))

    def is_lfs(self, filename: str) -> bool:
        return filename.endswith(LFS_SUFFIXES)

    def has_revision(self, revision: str) -> bool:
        return revision in ("main", self.commit)


@dataclass(frozen=True)
class _Blob:
    name: str
    data: bytes


class HubEmulator:
    """The Hub on one loopback port and its CDN on another; `url` is the Hub's endpoint."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        #: old repository id -> new one: the Hub redirects the old name (307, relative)
        self.renamed: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        #: close the connection once the file's bytes up to this offset have been sent, on
        #: the next `cuts` file GETs that start before it (a resumed GET is cut there too)
        self.cut_after: int | None = None
        self.cuts = 1
        #: the CDN sends every file with its first byte flipped (a broken cache or disk)
        self.corrupt = False
        #: every Hub request (not the CDN's) answers this status, as during an outage
        self.outage: int | None = None
        self.url = ""
        self.cdn_url = ""
        self._blobs: dict[str, _Blob] = {}
        self._secret = secrets.token_bytes(16)
        self._runners: list[web.AppRunner] = []

    # -- knobs ----------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        license: str | None = "apache-2.0",
        gated: bool = False,
    ) -> HubRepo:
        repo = HubRepo(repo_id, dict(files), license=license, gated=gated)
        self.repos[repo_id] = repo
        for name, data in repo.files.items():
            if repo.is_lfs(name):
                self._blobs[hashlib.sha256(data).hexdigest()] = _Blob(name.rsplit("/", 1)[-1], data)
        return repo

    def file_requests(self, method: str = "GET") -> list[RecordedRequest]:
        """Requests for a file's bytes (the CDN's, or a small file's own)."""
        return [r for r in self.requests if r.method == method and (r.site == "cdn" or "/resolve/" in r.path)]

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind the Hub and its CDN to free ports on 127.0.0.1; return the Hub's URL."""
        hub = web.Application(middlewares=[self._recorder("hub")])
        hub.router.add_get("/{owner}/{name}/resolve/{revision}/{filename:.+}", self._resolve)
        hub.router.add_get("/api/models/{owner}/{name}", self._model_info)
        hub.router.add_get("/api/models/{owner}/{name}/revision/{revision}", self._model_info)
        cdn = web.Application(middlewares=[self._recorder("cdn")])
        cdn.router.add_get("/repos/{a}/{b}/{sha256}", self._cdn)
        self.url = await self._serve(hub)
        self.cdn_url = await self._serve(cdn)
        return self.url

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> HubEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    def _recorder(self, site: Site) -> Middleware:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append(
                RecordedRequest(
                    site=site,
                    method=request.method,
                    path=request.path,
                    range=request.headers.get("Range"),
                    authorized="Authorization" in request.headers,
                )
            )
            if site == "hub" and self.outage is not None:
                return web.Response(status=self.outage, text="Service Unavailable")
            return await handler(request)

        return record

    # -- the Hub --------------------------------------------------------------------------

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        revision = request.match_info["revision"]
        filename = request.match_info["filename"]
        repo = self._visible_repo(request, repo_id)
        if repo.gated:
            raise _gated(request, repo_id)
        if not repo.has_revision(revision):
            raise _hub_error(web.HTTPNotFound, "RevisionNotFound", f"Invalid rev id: {revision}")
        data = repo.files.get(filename)
        if data is None:
            raise _hub_error(
                web.HTTPNotFound, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit}
            )
        if repo.is_lfs(filename):
            return self._lfs_redirect(repo, filename, data)
        return _send_bytes(request, data, _git_file_headers(repo, filename, data))

    def _visible_repo(self, request: web.Request, repo_id: str) -> HubRepo:
        """The repository, or the Hub's answer for one renamed, or that does not exist (or is private)."""
        if repo_id in self.renamed:
            new_path = request.path.replace(f"/{repo_id}/", f"/{self.renamed[repo_id]}/", 1)
            if request.path.endswith(f"/{repo_id}"):
                new_path = request.path.removesuffix(repo_id) + self.renamed[repo_id]
            raise web.HTTPTemporaryRedirect(new_path)
        repo = self.repos.get(repo_id)
        if repo is not None:
            return repo
        if "Authorization" in request.headers:
            raise _hub_error(web.HTTPNotFound, "RepoNotFound", "Repository not found")
        raise _hub_error(web.HTTPUnauthorized, "RepoNotFound", "Invalid username or password.")

    def _lfs_redirect(self, repo: HubRepo, filename: str, data: bytes) -> web.Response:
        sha256 = hashlib.sha256(data).hexdigest()
        location = self._signed_url(sha256, filename.rsplit("/", 1)[-1])
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        ).encode()
        body = f"Found. Redirecting to {location}"
        return web.Response(
            status=302,
            text=body,
            content_type="text/plain",
            headers={
                "Location": location,
                "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_id(pointer)}"',
                "Accept-Ranges": "bytes",
                "Vary": "Origin, Accept",
                "Access-Control-Expose-Headers": _EXPOSE,
            },
        )

    async def _model_info(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self._visible_repo(request, repo_id)
        revision = request.match_info.get("revision", "main")
        if not repo.has_revision(revision):
            raise _hub_error(web.HTTPNotFound, "RevisionNotFound", f"Invalid rev id: {revision}")
        return web.json_response(_model_info_json(repo))

    # -- the CDN --------------------------------------------------------------------------

    def _signed_url(self, sha256: str, name: str) -> str:
        path = f"/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        expires = int(time.time()) + _URL_LIFETIME
        disposition = quote(f"inline; filename*=UTF-8''{name}; filename=\"{name}\";", safe="")
        return (
            f"{self.cdn_url}{path}?response-content-disposition={disposition}"
            f"&Expires={expires}&Signature={self._sign(path, expires)}&Key-Pair-Id=KHERALDTEST"
        )

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}:{expires}".encode(), hashlib.sha256).hexdigest()

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            raise _s3_error(web.HTTPBadRequest, "InvalidArgument", "Only one auth mechanism allowed")
        self._check_signature(request)
        blob = self._blobs.get(request.match_info["sha256"])
        if blob is None:
            raise _s3_error(web.HTTPForbidden, "AccessDenied", "Access Denied")
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{blob.name}; filename=\"{blob.name}\";",
            "ETag": f'"{request.match_info["sha256"]}"',
            "Cache-Control": "public, max-age=604800, immutable, s-maxage=604800",
            "Accept-Ranges": "bytes",
        }
        data = bytes([blob.data[0] ^ 0xFF]) + blob.data[1:] if self.corrupt and blob.data else blob.data
        return await self._send_file(request, data, headers)

    def _check_signature(self, request: web.Request) -> None:
        try:
            expires = int(request.query["Expires"])
            signature = request.query["Signature"]
        except (KeyError, ValueError):
            raise _s3_error(web.HTTPForbidden, "MissingKey", "Missing Key-Pair-Id query parameter") from None
        if not hmac.compare_digest(signature, self._sign(request.path, expires)):
            raise _s3_error(web.HTTPForbidden, "AccessDenied", "Access denied")
        if expires < time.time():
            raise _s3_error(web.HTTPForbidden, "AccessDenied", "Request has expired")

    async def _send_file(
        self, request: web.Request, data: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The file, or the part a ``Range`` asks for; a planned cut closes the connection."""
        start, end = _byte_range(request.headers.get("Range"), len(data))
        if start > end:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
        partial = "Range" in request.headers
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        response = web.StreamResponse(status=206 if partial else 200, headers=headers)
        response.content_length = end + 1 - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        body = data[start : end + 1]
        if self.cut_after is not None and self.cuts > 0 and start < self.cut_after:
            self.cuts -= 1
            await self._cut(request, response, body[: self.cut_after - start])
        await response.write(body)
        await response.write_eof()
        return response

    async def _cut(self, request: web.Request, response: web.StreamResponse, sent: bytes) -> None:
        """Send `sent`, then close the connection as a dropped network would; never return."""
        await response.write(sent)
        if request.transport is not None:
            request.transport.close()  # what was written still goes out first
        await asyncio.Event().wait()  # handler_cancellation ends this when the connection is gone


def _send_bytes(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    start, end = _byte_range(request.headers.get("Range"), len(data))
    if start > end:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
    if "Range" in request.headers:
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return web.Response(status=206, body=data[start : end + 1], headers=headers)
    return web.Response(body=data, headers=headers)


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """The inclusive byte range a single-range ``Range`` header asks for (RFC 9110 §14.1.2).

    An empty result (start > end) is unsatisfiable; a header this cannot read is ignored,
    as the RFC allows, and the whole file is sent.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return 0, size - 1
    first, last = match.groups()
    if first == "":  # the last N bytes
        return max(0, size - int(last)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


def _git_file_headers(repo: HubRepo, filename: str, data: bytes) -> dict[str, str]:
    name = filename.rsplit("/", 1)[-1]
    return {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
        "ETag": f'"{git_blob_id(data)}"',
        "X-Repo-Commit": repo.commit,
        "Accept-Ranges": "bytes",
        "Vary": "Origin, Accept",
        "Access-Control-Expose-Headers": _EXPOSE,
    }


def _model_info_json(repo: HubRepo) -> dict[str, object]:
    owner = repo.repo_id.split("/", 1)[0]
    tags = ["gguf", "chat", "text-generation", "en"]
    card: dict[str, object] = {"language": ["en"], "pipeline_tag": "text-generation", "tags": ["chat"]}
    if repo.license is not None:
        tags.append(f"license:{repo.license}")
        card["license"] = repo.license
    tags += ["endpoints_compatible", "region:us", "conversational"]
    return {
        "_id": repo.commit[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": owner,
        "sha": repo.commit,
        "lastModified": "2024-09-20T12:00:00.000Z",
        "createdAt": "2024-09-17T12:00:00.000Z",
        "private": False,
        "disabled": False,
        "gated": "manual" if repo.gated else False,
        "downloads": 0,
        "likes": 0,
        "library_name": "gguf",
        "tags": tags,
        "pipeline_tag": "text-generation",
        "cardData": card,
        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        "spaces": [],
        "usedStorage": sum(len(data) for data in repo.files.values()),
    }


def _gated(request: web.Request, repo_id: str) -> web.HTTPException:
    if "Authorization" not in request.headers:
        message = (
            f"Access to model {repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
        )
        return _hub_error(web.HTTPUnauthorized, "GatedRepo", message)
    message = (
        f"Access to model {repo_id} is restricted and you are not in the authorized list. "
        f"Visit https://huggingface.co/{repo_id} to ask for access."
    )
    return _hub_error(web.HTTPForbidden, "GatedRepo", message)


def _hub_error(
    kind: type[web.HTTPException],
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.HTTPException:
    """An error as the Hub sends it: the code and message in headers and a JSON body."""
    return kind(
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
    )


def _s3_error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n{xml}'
    return kind(text=body, content_type="application/xml")
