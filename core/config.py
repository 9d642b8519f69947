"""Herald's settings: read once from the environment and `.env`, validated up front.

`Settings` holds the core's own: every name is `HERALD_` + the field name in
capitals. Each platform declares its own settings the same way, as a
`HeraldSettings` with its prefix (`HERALD_TELEGRAM_`…), beside its adapter. A
wrong value ends start-up with one message naming each problem and how to fix
it (`ConfigError`). A setting typed `SecretStr` is a secret wherever it is
declared: its value is never echoed, and logs mask it (`secret_values`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.llm.model_source import DEFAULT_LOCAL_MODEL, parse_model_source

DEFAULT_SYSTEM_PROMPT = (
    "You are Herald, a helpful assistant for online communities and social-media teams. "
    "Answer clearly and concisely. Use Markdown sparingly (bold, lists, code blocks). "
    "Never mention @everyone, @here or any user or role unless asked to."
)

ENV_PREFIX = "HERALD_"

CsvList = Annotated[list[str], NoDecode]


class ConfigError(Exception):
    """Configuration is wrong; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def render(self) -> str:
        lines = ["Herald cannot start: the configuration has problems."]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("Set these in the environment or in a .env file (see .env.example).")
        return "\n".join(lines)


def split_csv(value: Any) -> Any:
    """`a, b,c` → ["a", "b", "c"] (for `CsvList` settings, as a `before` validator)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL such as http://localhost:8080")
    return value.rstrip("/")


def host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port, e.g. 0.0.0.0:8443")
    return value


class HeraldSettings(BaseSettings):
    """Settings read from the environment and `.env`; subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )


class Settings(HeraldSettings):
    """The core's configuration. See README's table for what each one does."""

    # The model server; with neither set, the built-in model (llama.cpp on the CPU)
    tgi_url: str | None = None
    llm_api: Literal["tgi", "openai", "local"] | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "tgi"
    llm_max_concurrency: int | None = Field(default=None, ge=1)
    llm_max_input_tokens: int = Field(default=8192, ge=256)
    llm_connect_timeout: float = Field(default=5.0, gt=0)
    llm_idle_timeout: float = Field(default=60.0, gt=0)
    llm_queue_timeout: float = Field(default=30.0, gt=0)
    #: longest one answer may take, from its turn's start: a server that streams for ever
    #: is stopped here even when every token comes in time for the idle timeout
    answer_timeout: float = Field(default=300.0, gt=0)

    # /web: a SearXNG instance (its JSON format enabled)
    searxng_url: str | None = None

    # Publishing to social networks (core/social): the install's own accounts, and the
    # key that encrypts the accounts chats connect themselves
    secret_key: SecretStr | None = None
    x_api_key: SecretStr | None = None  # OAuth 1.0a user context: the app's key and secret…
    x_api_secret: SecretStr | None = None
    x_access_token: SecretStr | None = None  # …and the account's token and secret
    x_access_token_secret: SecretStr | None = None
    x_user_token: SecretStr | None = None  # or an OAuth 2.0 user access token (tweet.write)
    bluesky_handle: str | None = None
    bluesky_app_password: SecretStr | None = None
    bluesky_service: str = "https://bsky.social"
    mastodon_url: str | None = None
    mastodon_token: SecretStr | None = None
    #: X's API (a proxy, or a stand-in in tests)
    x_api_url: str = "https://api.x.com"

    # The built-in model
    local_model: str = DEFAULT_LOCAL_MODEL
    local_threads: int | None = Field(default=None, ge=1, le=1024)
    local_context: int = Field(default=4096, ge=512, le=262144)
    local_load_timeout: float = Field(default=300.0, gt=0)

    # Generation
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, min_length=1)
    max_new_tokens: int = Field(default=512, ge=1, le=32768)
    temperature: float = Field(default=0.7, gt=0, le=5)
    top_p: float = Field(default=0.95, gt=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    context_margin: int = Field(default=32, ge=0)
    context_block_messages: int = Field(default=32, ge=2, le=200)

    # Redis
    redis_url: str | None = None
    redis_prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Redis Cluster (or Valkey cluster): also implied by a redis+cluster:// URL
    redis_cluster: bool = False
    #: connections to Redis (on each node of a cluster): enough that an answer's commands
    #: never wait long, few enough that a burst of answers does not flood the event loop
    #: (measured at 1,000 streams: README, "Streaming")
    redis_max_connections: int = Field(default=128, ge=8)
    data_dir: Path | None = None

    # Intake (core/intake): events are kept in a Redis Stream until answered
    #: gateway: hold the platforms' connections and only enqueue; worker: only answer;
    #: all: both (`herald run --role` overrides it)
    role: Literal["gateway", "worker", "all"] = "all"
    #: `herald run`'s event loop: uvloop (libuv's, where installed) or asyncio's own
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    #: an event taken by a replica that stops renewing it is taken over after this long
    intake_visibility_seconds: float = Field(default=15.0, ge=2, le=600)
    #: events kept in the stream at most (trimmed approximately, oldest first)
    intake_max_length: int = Field(default=100_000, ge=1000)
    #: events one replica answers at once; more wait in the stream for any worker
    intake_capacity: int = Field(default=128, ge=1, le=100_000)

    # Memory
    history_ttl_days: float = Field(default=7.0, gt=0)
    history_max_messages: int = Field(default=200, ge=2)

    # Limits and quotas
    rate_limit_per_minute: float = Field(default=6.0, gt=0)
    rate_limit_burst: int = Field(default=5, ge=1)
    daily_token_quota: int = Field(default=200_000, ge=0)
    conversation_wait_timeout: float = Field(default=300.0, gt=0)

    # Access
    allowed_chats: CsvList = Field(default_factory=list)
    allowed_users: CsvList = Field(default_factory=list)
    admins: CsvList = Field(default_factory=list)
    manager_roles: CsvList = Field(default_factory=list)

    # Scheduled posts
    scheduler: bool = True

    default_timezone: str = "UTC"

    # Operations
    http_addr: str = "0.0.0.0:8787"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=3600)

    @field_validator("allowed_chats", "allowed_users", "admins", "manager_roles", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("allowed_chats", "allowed_users", "admins", "manager_roles")
    @classmethod
    def _platform_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            platform, sep, ident = item.partition(":")
            if not sep or not platform or not ident:
                raise ValueError(f"'{item}' must be written platform:id, e.g. telegram:12345 or discord:*")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Berlin") from None
        return value

    @field_validator("tgi_url")
    @classmethod
    def _tgi_url(cls, value: str | None) -> str | None:
        return http_url(value, "the model server URL") if value else None

    @field_validator("searxng_url")
    @classmethod
    def _searxng_url(cls, value: str | None) -> str | None:
        return http_url(value, "the SearXNG URL") if value else None

    @field_validator("bluesky_service", "mastodon_url", "x_api_url")
    @classmethod
    def _network_url(cls, value: str | None) -> str | None:
        return http_url(value, "the server's URL") if value else None

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            parts = [p.strip() for p in value.get_secret_value().split(",") if p.strip()]
            if any(len(part) < 32 for part in parts):
                raise ValueError("each comma-separated key needs at least 32 characters")
            return value
        return None

    @field_validator("llm_api", mode="before")
    @classmethod
    def _api(cls, value: Any) -> Any:
        return (value.strip().lower() or None) if isinstance(value, str) else value

    @field_validator("local_model")
    @classmethod
    def _local_model(cls, value: str) -> str:
        parse_model_source(value)  # raises ValueError with the reason
        return value.strip()

    @field_validator("http_addr")
    @classmethod
    def _listen(cls, value: str) -> str:
        return host_port(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_together(self) -> Settings:
        if self.llm_api == "local" and self.tgi_url:
            raise ValueError(
                "HERALD_LLM_API=local runs the built-in model: unset HERALD_TGI_URL, "
                "or set HERALD_LLM_API to tgi or openai to use that server"
            )
        if self.llm_api in ("tgi", "openai") and not self.tgi_url:
            raise ValueError(
                f"HERALD_LLM_API={self.llm_api} needs HERALD_TGI_URL (the server's URL); "
                "unset both to use the built-in model"
            )
        x_oauth1 = (self.x_api_key, self.x_api_secret, self.x_access_token, self.x_access_token_secret)
        if any(x_oauth1) and not all(x_oauth1):
            raise ValueError(
                "X's OAuth 1.0a needs all four of HERALD_X_API_KEY, HERALD_X_API_SECRET, "
                "HERALD_X_ACCESS_TOKEN and HERALD_X_ACCESS_TOKEN_SECRET"
            )
        if all(x_oauth1) and self.x_user_token:
            raise ValueError("set either X's OAuth 1.0a keys or HERALD_X_USER_TOKEN, not both")
        if bool(self.bluesky_handle) != bool(self.bluesky_app_password):
            raise ValueError("HERALD_BLUESKY_HANDLE and HERALD_BLUESKY_APP_PASSWORD go together")
        if bool(self.mastodon_url) != bool(self.mastodon_token):
            raise ValueError("HERALD_MASTODON_URL and HERALD_MASTODON_TOKEN go together")
        if self.llm_backend == "openai" and self.max_new_tokens >= self.llm_max_input_tokens:
            raise ValueError("HERALD_MAX_NEW_TOKENS must be smaller than HERALD_LLM_MAX_INPUT_TOKENS")
        if self.llm_backend == "local" and self.max_new_tokens >= self.local_context:
            raise ValueError("HERALD_MAX_NEW_TOKENS must be smaller than HERALD_LOCAL_CONTEXT")
        return self

    @property
    def llm_backend(self) -> Literal["tgi", "openai", "local"]:
        """The model in use: `HERALD_LLM_API` where given, else TGI at `HERALD_TGI_URL`,
        else the built-in model."""
        if self.llm_api is not None:
            return self.llm_api
        return "tgi" if self.tgi_url else "local"

    @property
    def history_ttl_seconds(self) -> int:
        return int(self.history_ttl_days * 86400)


def is_secret(settings: type[BaseSettings], field: str) -> bool:
    """Whether a field is typed as a secret (`SecretStr`, optional or not)."""
    info = settings.model_fields.get(field)
    if info is None:
        return False
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


def secret_values(*settings: BaseSettings) -> list[str]:
    """The value of every secret-typed setting in `settings`: what logs must mask."""
    return [
        value.get_secret_value()
        for item in settings
        for name in type(item).model_fields
        if isinstance(value := getattr(item, name), SecretStr) and value.get_secret_value()
    ]


def _describe(settings: type[BaseSettings], error: dict[str, Any]) -> str:
    prefix = str(settings.model_config.get("env_prefix", ""))
    loc = [str(part) for part in error.get("loc", ()) if not str(part).isdigit()]
    name = prefix + loc[0].upper() if loc else "configuration"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if not loc or isinstance(given, dict) or is_secret(settings, loc[0]) else f" (got {given!r})"
    return f"{name}: {message}{shown}"


S = TypeVar("S", bound=BaseSettings)


def read_settings(settings: type[S], env_file: str | Path | None = ".env", **overrides: Any) -> S:
    """Read one settings class, turning every validation failure into one `ConfigError`."""
    try:
        return settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise ConfigError([_describe(settings, dict(e)) for e in exc.errors()]) from None


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """The core's settings (the platforms' are read beside them: `bots.config`)."""
    return read_settings(Settings, env_file, **overrides)
