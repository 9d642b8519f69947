"""Where the built-in model's GGUF file comes from: a local file, or a file on the Hub.

`HERALD_LOCAL_MODEL` names either a path (``/models/x.gguf``, ``./x.gguf``,
``~/x.gguf``, or any existing file) or a file in a Hugging Face Hub model
repository, written ``owner/repo/path/in/repo.gguf`` (``owner/repo@revision/…``
pins a branch, tag or commit). Parsing is strict so that a typo is reported when
Herald starts, in a sentence, rather than as a 404 from the Hub later on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_LOCAL_MODEL", "ModelSource", "parse_model_source"]

#: Qwen's own GGUF build of Qwen2.5 0.5B Instruct (Apache-2.0, not gated): ~0.5 GB, runs on any CPU.
DEFAULT_LOCAL_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"

DEFAULT_REVISION = "main"
_PATH_PREFIXES = ("/", "./", "../", "~")
# The Hub's rule for user, organisation and repository names (huggingface_hub's
# validate_repo_id): word characters, '-' and '.', starting and ending with a word
# character, no '--' or '..', at most 96 characters (ASCII only, here).
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_FILE_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_REVISION = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ModelSource:
    """A GGUF file: local (`path`) or on the Hub (`repo_id`, `filename`, `revision`).

    Build one with `local` or `hub` (or `parse_model_source`); exactly one kind is set.
    """

    path: Path | None = None
    repo_id: str | None = None
    filename: str | None = None
    revision: str = DEFAULT_REVISION

    def __post_init__(self) -> None:
        hub = self.repo_id is not None and self.filename is not None
        partial_hub = (self.repo_id is None) != (self.filename is None)
        if partial_hub or hub == (self.path is not None):
            raise ValueError("a model source is either a path or a Hub repo_id and filename")

    @classmethod
    def local(cls, path: Path) -> ModelSource:
        return cls(path=path)

    @classmethod
    def hub(cls, repo_id: str, filename: str, revision: str = DEFAULT_REVISION) -> ModelSource:
        return cls(repo_id=repo_id, filename=filename, revision=revision)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def describe(self) -> str:
        """A short name for people: the path, or "file from owner/repo" (and the revision if pinned)."""
        if self.path is not None:
            return str(self.path)
        name = f"{self.filename} from {self.repo_id}"
        return name if self.revision == DEFAULT_REVISION else f"{name} at {self.revision}"


def parse_model_source(value: str, *, is_file: Callable[[Path], bool] = Path.is_file) -> ModelSource:
    """Read a `HERALD_LOCAL_MODEL` value; `ValueError` says, for a person, what is wrong.

    The only look at the disk is `is_file`, to take an existing relative path such as
    ``models/x.gguf`` for a file rather than a Hub name; tests may pass their own.
    """
    text = value.strip()
    if not text:
        raise ValueError("no model given: name a .gguf file path or a Hub file such as owner/repo/model.gguf")
    if text.startswith(_PATH_PREFIXES) or _exists(text, is_file):
        return ModelSource.local(_local_path(text))
    return _hub_source(text)


def _exists(text: str, is_file: Callable[[Path], bool]) -> bool:
    try:
        return is_file(Path(text))
    except (OSError, ValueError):  # a name too long or with a NUL byte is no file
        return False


def _local_path(text: str) -> Path:
    if not text.lower().endswith(".gguf"):
        raise ValueError(f"{text!r} is not a GGUF model file: its name must end in .gguf")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # '~user' of an unknown user, or no home directory
        raise ValueError(f"{text!r}: cannot find that home directory") from None


def _hub_source(text: str) -> ModelSource:
    if any(ch.isspace() for ch in text):
        raise ValueError(f"{text!r} contains spaces: a Hub file is written owner/repo/model.gguf")
    if ".." in text:
        raise ValueError(f"{text!r}: '..' is not allowed in a Hub name")
    if "://" in text:
        raise ValueError(f"{text!r} is a URL: write a Hub file as owner/repo/model.gguf")
    parts = text.split("/")
    if len(parts) == 2:
        raise ValueError(f"{text!r} names a repository, not a file: add the file, e.g. {text}/model.gguf")
    if len(parts) < 3:
        raise ValueError(f"{text!r} is neither a .gguf file path nor a Hub file (owner/repo/model.gguf)")
    owner, repo, files = parts[0], parts[1], parts[2:]
    repo, revision = _split_revision(text, repo)
    for name in (owner, repo):
        if not _HUB_NAME.fullmatch(name) or "--" in name:
            raise ValueError(f"{text!r}: {name!r} is not a valid Hub user or repository name")
    if repo.endswith(".git"):
        raise ValueError(f"{text!r}: a Hub repository name cannot end in .git")
    for segment in files:
        if not _FILE_SEGMENT.fullmatch(segment):
            shown = repr(segment) if segment else "an empty part (//)"
            raise ValueError(f"{text!r}: {shown} is not a valid file name on the Hub")
    filename = "/".join(files)
    if not filename.lower().endswith(".gguf"):
        raise ValueError(f"{text!r} is not a GGUF model file: its name must end in .gguf")
    return ModelSource.hub(f"{owner}/{repo}", filename, revision)


def _split_revision(text: str, repo: str) -> tuple[str, str]:
    """``repo@rev`` pins a branch, tag or commit; anything with '/' in it is not supported."""
    if "@" not in repo:
        return repo, DEFAULT_REVISION
    name, _, revision = repo.partition("@")
    if not _REVISION.fullmatch(revision):
        raise ValueError(f"{text!r}: after '@' comes a branch, tag or commit id, not {revision!r}")
    return name, revision
