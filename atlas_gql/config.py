"""Settings: the environment first, then `.env`, then the defaults below.

Size: over 400 lines on purpose: the one Settings class (DESIGN.md: one pydantic-settings
class), each setting with its description and bounds, and its production checks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Group = TypeVar("Group", bound="DataclassInstance")
T = TypeVar("T")

# Development defaults. They are public (committed in `.env` too), so production refuses them.
DEVELOPMENT_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"
DEVELOPMENT_SEED_PASSWORD = "atlas-dev-password"
# Browser origins allowed in development when ATLAS_CORS_ORIGINS is unset: the dev servers of
# Create React App / Next.js (3000) and Vite (5173). Production allows none unless set.
DEVELOPMENT_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class RegistrationMode(StrEnum):
    """Who may open an account with `register` (docs/security.md, "Registration")."""

    # Anyone; the account may use AI at once.
    OPEN = "open"
    # Anyone; the account signs in but may not use AI until an administrator approves it.
    APPROVAL = "approval"
    # Nobody: accounts are made by administrators (createUser, `atlas-gql create-user`).
    CLOSED = "closed"


class OpenAIApi(StrEnum):
    RESPONSES = "responses"
    CHAT = "chat"


class OpenAIHttpClient(StrEnum):
    HTTPX = "httpx"
    AIOHTTP = "aiohttp"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class MetricsAccess(StrEnum):
    OFF = "off"
    LOOPBACK = "loopback"
    TOKEN = "token"


# The shortest ATLAS_METRICS_TOKEN accepted (a scrape token is a shared secret).
MIN_METRICS_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class TextLimits:
    """The longest text each free-text input may hold, in characters unless said otherwise:
    the one table the services check (`db.inputs.check_length` or their own validators;
    BAD_USER_INPUT naming the field beyond it), listed in docs/security.md ("Inputs"). Two
    more are settings, since operators tune them: message content (ATLAS_MAX_MESSAGE_CHARS)
    and assistant instructions (ATLAS_MAX_INSTRUCTIONS_CHARS, at most `instructions_ceiling`)."""

    name: int = 200  # a user's, project's or assistant's name
    email: int = 320  # RFC 5321's longest address
    thread_title: int = 300
    project_description: int = 10_000
    assistant_description: int = 2_000
    rating_comment: int = 2_000  # a sentence or two, not an essay
    api_key_name: int = 100
    instructions_ceiling: int = 256_000  # what ATLAS_MAX_INSTRUCTIONS_CHARS may be raised to
    search: int = 200  # users' and projects' `search`
    filter_value: int = 200  # log filters: `action`, `entityType`, `model`
    model: int = 100  # a model's name
    token: int = 512  # a refresh token (43 characters when ATLAS makes it)
    global_id: int = 200  # a Relay id (about 60 characters when ATLAS makes it)
    filename: int = 255  # an upload's file name (cut to this, not refused)
    setting_key: int = 64
    setting_value_bytes: int = 64 * 1024  # a project setting's JSON, compact UTF-8
    password_bytes: int = 72  # bcrypt reads no further: refused rather than cut


TEXT_LIMITS = TextLimits()


def count(
    default: int | None, *, minimum: int = 1, maximum: int | None = None, **field: Any
) -> Any:
    """A number of things: `minimum` (1) or more, at most `maximum`."""
    return Field(default=default, ge=minimum, le=maximum, **field)


def seconds(
    default: float, *, minimum: float | None = None, maximum: float | None = None, **field: Any
) -> Any:
    """A duration in seconds: more than 0, or `minimum` or more; at most `maximum`."""
    field.setdefault("description", "seconds")
    bounds: dict[str, Any] = {"gt": 0} if minimum is None else {"ge": minimum}
    return Field(default=default, le=maximum, **bounds, **field)


def usd(default: float, **field: Any) -> Any:
    """A price in US dollars, 0 or more."""
    return Field(default=default, ge=0, **field)


def _unless_set(value: T | None, default: T) -> T:
    """A setting whose default depends on others: its value when set, else `default`."""
    return default if value is None else value


class Settings(BaseSettings):
    """Every knob of ATLAS. Names are the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; empty means the embedded PostgreSQL in ATLAS_DATA_DIR.",
    )
    atlas_env: Environment = Environment.DEVELOPMENT
    atlas_data_dir: Path = Path(".atlas")
    atlas_jwt_secret: str = DEVELOPMENT_JWT_SECRET
    atlas_jwt_algorithm: str = "HS256"
    atlas_jwt_issuer: str = "atlas-gql"
    atlas_jwt_audience: str = "atlas-gql"
    atlas_access_token_ttl: int = seconds(900, minimum=30, maximum=3600)
    atlas_refresh_token_ttl: int = seconds(30 * 24 * 3600, minimum=60)
    atlas_seed_password: str = DEVELOPMENT_SEED_PASSWORD
    # Failed sign-ins (docs/security.md, "Sign-in"): a lock per account and address, a limit
    # per address, and a slower backoff per account that no single address can set off.
    atlas_login_max_failures: int = count(
        10, description="failed sign-ins per account from one address per window"
    )
    atlas_login_failure_window: int = seconds(900, minimum=1)
    atlas_login_address_max_failures: int = count(
        50, description="failed sign-ins from one address (any accounts) per window"
    )
    atlas_login_account_backoff_after: int = count(
        20,
        description="failed sign-ins of one account (any addresses) per window before each "
        "further attempt waits",
    )
    atlas_login_account_backoff_max: int = count(
        60, description="longest wait (seconds) of the per-account backoff"
    )

    # Registration and what an account may spend (docs/security.md, "Registration", "Spend").
    atlas_registration: RegistrationMode | None = Field(
        default=None,
        description="open | approval | closed; default: approval in production, open in "
        "development",
    )
    atlas_registrations_per_hour: int = count(
        5, description="registrations per client address per hour"
    )
    atlas_registrations_per_hour_global: int = count(
        100, description="registrations per hour, all addresses together"
    )
    atlas_user_monthly_tokens: int | None = count(
        1_000_000,
        minimum=0,
        description="tokens (input + output) a user's replies may use per UTC month, unless "
        "an administrator set the user's own budget; empty: no default budget",
    )
    atlas_user_messages_per_minute: int = count(
        10, description="sendMessage calls per user per minute (token bucket)"
    )
    atlas_api_key_messages_per_minute: int = count(
        10,
        description="sendMessage calls per personal API key per minute (token bucket), on top "
        "of its user's own rate",
    )
    atlas_api_key_last_used_interval: int = count(
        60,
        maximum=3600,
        description="seconds between two updates of a key's lastUsedAt (not a write per request)",
    )
    atlas_api_keys_per_user: int = count(
        50, maximum=1000, description="live (not revoked) API keys a user may hold"
    )
    atlas_max_instructions_chars: int = count(
        32_000,
        maximum=TEXT_LIMITS.instructions_ceiling,
        description="longest assistant instructions, in characters (sent with every reply)",
    )

    openai_api_key: str = "sk-dev-placeholder"
    openai_base_url: str | None = None
    atlas_openai_api: OpenAIApi = OpenAIApi.RESPONSES
    atlas_openai_timeout: float = seconds(60.0)
    atlas_openai_http_client: OpenAIHttpClient = Field(
        default=OpenAIHttpClient.AIOHTTP,
        description="the OpenAI SDK's HTTP transport: aiohttp (measured faster) or httpx",
    )
    atlas_default_model: str = "gpt-4o-mini"
    atlas_title_model: str = Field(
        default="gpt-4o-mini",
        min_length=1,
        description="the short, cheap model that names untitled threads (docs/titles.md)",
    )
    atlas_auto_titles: bool = Field(
        default=True,
        description="name an untitled thread after its first reply completes (a background "
        "call to ATLAS_TITLE_MODEL); generateThreadTitle works either way",
    )
    atlas_allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    atlas_max_message_chars: int = count(32_000)
    atlas_max_upload_bytes: int = count(20 * 1024 * 1024)

    atlas_model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description='JSON {"model": [usd_per_1m_input, usd_per_1m_output]} over the built-in table',
    )
    atlas_file_search_call_usd: float = usd(
        0.0025, description="USD per file search tool call (OpenAI: $2.50 / 1k)"
    )
    atlas_web_search_call_usd: float = usd(
        0.01, description="USD per web search tool call (OpenAI: $10 / 1k)"
    )
    atlas_vector_store_gb_day_usd: float = usd(
        0.10,
        description="USD per GB-day of vector store storage (OpenAI: $0.10), metered by "
        "`atlas-gql meter-storage`",
    )
    atlas_reply_stale_after: float = seconds(
        60.0, description="seconds without progress after which an IN_PROGRESS reply is INCOMPLETE"
    )
    atlas_openai_background: bool = Field(
        default=True,
        description="Responses adapter: start replies as background responses, so a reply "
        "whose worker dies or restarts is resumed (ignored by the chat adapter)",
    )
    atlas_reply_resume_after: float = seconds(
        15.0,
        minimum=1,
        description="seconds without a heartbeat after which another worker resumes a "
        "background reply",
    )

    atlas_subscription_recheck: float = seconds(
        1.0,
        minimum=0,
        description="seconds between the batched re-checks of open threadEvents subscriptions "
        "(a logout, a deactivation or a removal from the project ends them within about this "
        "long, mid-reply too); 0 checks only at each new exchange",
    )
    atlas_subscriber_backlog: int = count(
        2000,
        minimum=16,
        description="events waiting for one subscriber (its socket is not taking them) beyond "
        "which its WebSocket is closed with 1013 (try again later; reconnect with "
        "afterSequence), or its HTTP stream ended",
    )
    atlas_subscriber_merge_after: float = seconds(
        0.025,
        minimum=0,
        description="seconds an event may wait for a subscriber that fell behind before the "
        "deltas of the same message queued behind it are sent merged, as one delta numbered "
        "as the last of them; 0 merges only when 16 events wait. Nothing is held back to be "
        "merged: a subscriber keeping up gets every delta as it comes",
    )

    atlas_ws_per_message_deflate: bool = Field(
        default=False,
        description="compress WebSocket frames (permessage-deflate): costs CPU and memory per "
        "socket for small JSON frames",
    )

    redis_url: str | None = None
    atlas_redis_timeout: float = seconds(
        0.25,
        description="seconds a broker command (publish, history, control) waits for Redis "
        "before Redis is skipped for a while (the circuit opens)",
    )
    atlas_redis_subscribe_timeout: float = seconds(
        2.0,
        description="seconds the event broker waits for Redis to confirm a SUBSCRIBE before "
        "it checks Redis answers (then waits again, three rounds at most; a Redis that does "
        "not answer is skipped at once)",
    )
    atlas_redis_retry_max: float = seconds(
        30.0, description="longest pause (seconds) before a Redis that failed is probed again"
    )
    atlas_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="allowed browser origins; unset: DEVELOPMENT_CORS_ORIGINS in development, "
        "none in production",
    )

    atlas_max_http_streams: int = count(
        1000,
        minimum=0,
        description="subscription streams over HTTP (multipart, SSE) a worker keeps open at "
        "once; 0 serves subscriptions over the WebSocket only",
    )
    atlas_max_http_streams_per_user: int = count(
        10, description="subscription streams over HTTP one user may keep open on a worker"
    )

    atlas_max_depth: int = count(12)
    atlas_max_aliases: int = count(30)
    atlas_max_tokens: int = count(1_000, description="lexical tokens and comments")
    atlas_max_cost: int = count(50_000)
    atlas_max_body_bytes: int = count(1024 * 1024)
    atlas_max_document_bytes: int = count(
        100 * 1024,
        description="largest GraphQL document (UTF-8 bytes, comments and whitespace included)",
    )
    atlas_document_cache_bytes: int = count(
        32 * 1024 * 1024,
        minimum=0,
        description="memory the parsed and validated document cache may hold (0: no cache)",
    )
    atlas_introspection: bool | None = Field(
        default=None, description="default: on in development, off in production"
    )
    atlas_graphiql: bool | None = Field(
        default=None, description="GraphiQL in browsers; default: on in development only"
    )
    atlas_compiled_reads: bool = Field(
        default=True,
        description="serve the queries the compiler can build as one SQL statement each "
        '(docs/architecture.md, "Compiled reads"); false: every operation runs the resolvers',
    )
    atlas_db_ping_after_idle: float = seconds(
        10.0,
        minimum=0,
        description="seconds a pooled connection may sit idle before it is pinged at checkout "
        "(0: ping at every checkout)",
    )
    # The worker's connection pool (docs/architecture.md, "Connection pool"): requests hold a
    # connection for their operation, replies only for each short write.
    atlas_db_pool_size: int = count(
        10, description="connections to PostgreSQL a worker keeps open (its pool)"
    )
    atlas_db_max_overflow: int = count(
        10,
        minimum=0,
        description="connections a worker may open beyond the pool while every pooled one is "
        "busy (closed again when returned)",
    )
    atlas_db_pool_timeout: float = seconds(
        30.0,
        description="seconds an operation or a reply's write waits for a free connection when "
        "all are busy, before it fails (DB_UNAVAILABLE)",
    )
    atlas_log_retention_days: int = count(90)
    atlas_error_log_retention_days: int | None = count(
        None, description="days ErrorLog rows are kept; default: the value above"
    )
    # Error logs cannot be flooded (docs/security.md, "Logs"): one row per kind of error per
    # window, with a count; each anonymous or signed-in source adds few rows per window.
    atlas_error_log_window_seconds: int = count(
        300,
        maximum=86_400,
        description="seconds of an ErrorLog window: repeats of one error in it are counted on "
        "one row",
    )
    atlas_error_log_rows_per_window: int = count(
        20,
        description="new ErrorLog rows per window from anonymous requests together, and from "
        "each user; beyond it their errors are counted on one overflow row",
    )
    atlas_bcrypt_rounds: int = count(
        12, minimum=4, maximum=16, description="bcrypt cost of new password hashes"
    )
    atlas_rate_limit_prefix: str = Field(
        default="atlas:ratelimit:", description="key prefix of rate-limit counters in Redis"
    )

    # The process edge: which peers may say who the client is, and how long a client may take
    # to send a request (docs/security.md, "Client addresses and proxies", "Slow clients").
    atlas_trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="comma-separated IPs or CIDR networks whose X-Forwarded-* headers count",
    )
    atlas_body_timeout: float = seconds(
        30.0, description="seconds a client has to send a whole request body"
    )
    atlas_header_timeout: float = seconds(
        10.0, description="seconds a connection has to send a request's headers (atlas-gql serve)"
    )
    atlas_max_header_bytes: int = count(
        64 * 1024, minimum=4096, description="largest request line plus headers, bytes"
    )

    # Observability (docs/observability.md).
    atlas_log_format: LogFormat | None = Field(
        default=None,
        description="json (one object per line) or text; default: json in production, text in "
        "development",
    )
    atlas_log_level: str = Field(
        default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$"
    )
    atlas_metrics: MetricsAccess = Field(
        default=MetricsAccess.LOOPBACK,
        description="who may read GET /metrics: off, loopback (clients on this machine) or "
        "token (Authorization: Bearer ATLAS_METRICS_TOKEN, from anywhere)",
    )
    atlas_metrics_token: str | None = Field(
        default=None, description="the bearer token /metrics asks for when ATLAS_METRICS=token"
    )
    atlas_tracing: bool | None = Field(
        default=None,
        description="OpenTelemetry traces (needs atlas-gql[otel]); default: on when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set",
    )

    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector base URL (OpenTelemetry's own variable); spans go there",
    )

    @field_validator("atlas_cors_origins", "atlas_allowed_models", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("atlas_trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        networks = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            try:
                networks.append(ip_network(item))
            except ValueError as exc:
                raise ValueError(
                    f"ATLAS_TRUSTED_PROXIES: {exc} (expected IP addresses or CIDR networks, "
                    "like 10.0.0.0/8 or fd00::/8)"
                ) from None
        return networks

    @field_validator(
        "database_url",
        "redis_url",
        "openai_base_url",
        "atlas_metrics_token",
        "otel_exporter_otlp_endpoint",
        "atlas_registration",
        "atlas_user_monthly_tokens",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _metrics_token_when_asked_for(self) -> Settings:
        if self.atlas_metrics is MetricsAccess.TOKEN and (
            not self.atlas_metrics_token or len(self.atlas_metrics_token) < MIN_METRICS_TOKEN_CHARS
        ):
            raise ValueError(
                f"ATLAS_METRICS=token needs ATLAS_METRICS_TOKEN of at least "
                f"{MIN_METRICS_TOKEN_CHARS} characters"
            )
        return self

    @model_validator(mode="after")
    def _development_cors_origins(self) -> Settings:
        if "atlas_cors_origins" not in self.model_fields_set and not self.is_production:
            self.atlas_cors_origins = list(DEVELOPMENT_CORS_ORIGINS)
        return self

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> Settings:
        if self.atlas_env is not Environment.PRODUCTION:
            return self
        problems = []
        if not self.atlas_jwt_secret or self.atlas_jwt_secret == DEVELOPMENT_JWT_SECRET:
            problems.append("ATLAS_JWT_SECRET must be set to a private value in production")
        elif len(self.atlas_jwt_secret) < 32:
            problems.append("ATLAS_JWT_SECRET must be at least 32 characters in production")
        if self.atlas_seed_password == DEVELOPMENT_SEED_PASSWORD:
            problems.append("ATLAS_SEED_PASSWORD must not be the development default in production")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_production(self) -> bool:
        return self.atlas_env is Environment.PRODUCTION

    @property
    def registration_mode(self) -> RegistrationMode:
        by_environment = RegistrationMode.APPROVAL if self.is_production else RegistrationMode.OPEN
        return _unless_set(self.atlas_registration, by_environment)

    @property
    def introspection_enabled(self) -> bool:
        return _unless_set(self.atlas_introspection, not self.is_production)

    @property
    def tracing_enabled(self) -> bool:
        return _unless_set(self.atlas_tracing, self.otel_exporter_otlp_endpoint is not None)

    @property
    def graphiql_enabled(self) -> bool:
        return _unless_set(self.atlas_graphiql, not self.is_production)


def settings_group(
    cls: type[Group], settings: Settings, *, prefix: str, **sources: str | None
) -> Group:
    """A dataclass of related settings (the sign-in limits, the document limits, the ErrorLog
    policy) read from `settings`: field `f` from `settings.<prefix><f>`, or from the setting or
    property `sources[f]` names; a field whose source is None keeps its default."""
    values: dict[str, Any] = {}
    for item in fields(cls):
        source = sources.get(item.name, prefix + item.name)
        if source is not None:
            values[item.name] = getattr(settings, source)
    return cls(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
