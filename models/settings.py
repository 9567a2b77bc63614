"""The one Settings class: every knob RedGrid has, read from the environment.

Nothing here is a module-level instance: entry points call ``load_settings()`` once and pass
the object down (app factory, worker, CLI), so tests can build their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.exceptions import ConfigError


class DispatchPolicy(BaseModel):
    """Dispatcher weights and radii (env: ``DISPATCH__<FIELD>``)."""

    fanout: float = 2.0  # wave size = open slots x fanout
    ttl_routine_s: int = 30 * 60
    ttl_urgent_s: int = 5 * 60
    ttl_emergency_s: int = 60
    # search radius per urgency, then how much each later wave widens it
    radius_routine_m: float = 5_000.0
    radius_urgent_m: float = 8_000.0
    radius_emergency_town_m: float = 500.0
    radius_emergency_village_m: float = 1_000.0
    wave_widen_factor: float = 2.0
    max_radius_m: float = 30_000.0
    max_waves: int = 5
    emergency_min_people: int = 3
    emergency_max_people: int = 5
    weekly_cap_hours: float = 12.0
    # ranking: distance dominates; these shift the order within a band of "similar" distances
    distance_band_m: float = 300.0
    w_fairness: float = 1.0
    w_reliability: float = 0.6
    w_continuity: float = 0.8
    fairness_window_days: int = 30
    # shifts
    cancel_cutoff_s: int = 2 * 3600
    understaffed_alert_s: int = 48 * 3600
    recurrence_horizon_days: int = 14
    # locality: same grid / village / town as the task earns this share of a band
    w_locality: float = 0.5
    # the index's H3 resolution (8: ~0.74 km² cells, a few dozen volunteers each)
    index_h3_res: int = 8
    # check-in/out: the window opens this long before the start; a location within this
    # distance of the task confirms it; credited hours are capped at the task's length + extra
    checkin_early_s: int = 3600
    checkin_radius_m: float = 1_000.0
    checkout_extra_h: float = 1.0
    # a report's dispatch task lasts until needed_by, or this long when none is given
    report_default_hours: float = 4.0
    # SOS (jobs/sos.py): accepts that are enough (one straight to the patient, one with the
    # AED); how long the emergency task runs (its window is what "busy" overlaps with); how
    # far from the patient an open AED is still worth fetching; a second SOS from the same
    # caller this soon and this near is the same emergency
    sos_responders: int = Field(default=2, ge=1, le=5)
    # waves widen from 500 m / 1 km but stop here: a first-aider farther away arrives after
    # the ambulance, so an SOS ends "exhausted" (coordinators told) rather than reach 8 km
    sos_max_radius_m: float = 3_000.0
    sos_task_minutes: int = Field(default=30, ge=5)
    sos_aed_reach_m: float = 1_000.0
    sos_repeat_window_s: int = 600
    sos_repeat_radius_m: float = 300.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str | None = None
    redis_url: str | None = None
    port: int = Field(default=8080, ge=1, le=65535)
    host: str = "0.0.0.0"
    var_dir: Path = Path("var")

    wechat_token: SecretStr = SecretStr("redgrid-dev-token")
    wechat_app_id: str = "wx0000000000redgrid"
    wechat_app_secret: SecretStr = SecretStr("redgrid-dev-secret")
    wechat_aes_key: SecretStr | None = None
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_timeout_s: float = 5.0
    template_shift_reminder: str | None = None
    template_task_offer: str | None = None
    template_broadcast: str | None = None
    template_digest: str | None = None

    tz: str = "Asia/Shanghai"
    replay_window_s: int = 300
    max_body_bytes: int = 64 * 1024
    dialog_ttl_s: int = 30 * 60
    dedupe_ttl_s: int = 600
    # a WeChat POST must be answered within 5 s; past this the engine's answer goes late
    reply_budget_s: float = Field(default=4.5, gt=0, le=4.8)
    public_base_url: str = "http://localhost:8080"

    broadcast_rate_per_s: float = 50.0
    broadcast_batch: int = 200
    broadcast_weekly_cap: int = 3

    # outbound sending (jobs/outbound.py)
    outbound_max_attempts: int = Field(default=5, ge=1)
    outbound_backoff_s: list[int] = [10, 60, 300, 900]  # delay before attempt 2, 3, ...
    outbound_claim_lease_s: int = 120  # a "sending" claim older than this is in doubt
    # reminders (jobs/reminders.py): before the start, and after the end (check out)
    reminder_before_s: list[int] = [24 * 3600, 2 * 3600]
    reminder_checkin: bool = True  # one at the start: "please check in"
    reminder_checkout_after_s: int = 15 * 60
    # AED keepers (jobs/aed.py): a monthly reminder lists AEDs not inspected for this long
    aed_inspection_days: int = Field(default=30, ge=1)

    # web console (bot/console): server-side sessions, lock-out, signed volunteer links
    console_secret: SecretStr | None = None  # unset: keys are derived from WECHAT_APP_SECRET
    console_session_ttl_s: int = 8 * 3600  # idle time before a console login ends
    console_cookie_secure: bool = False  # set true behind HTTPS so cookies never go in clear
    console_max_failures: int = 5  # failed logins in a row before the account is locked
    console_lockout_s: int = 15 * 60
    volunteer_link_ttl_s: int = 7 * 24 * 3600  # how long a signed /v/ link from the chat works

    # webhook (bot/webhook.py): per-openid rate limit (0 messages: off), and the engine's
    # thread pool (how many messages may be in the engine, i.e. the database, at once)
    ratelimit_messages: int = Field(default=20, ge=0)
    ratelimit_window_s: float = Field(default=10.0, gt=0)
    web_threads: int = Field(default=8, ge=1, le=64)
    # `redgrid web` processes (gunicorn workers when more than one): about one core each
    web_processes: int = Field(default=1, ge=1, le=64)
    # read-only turns on the event loop, no thread hop (bot/webhook.py, InlineGate)
    web_inline_reads: bool = True
    # how long a web process reuses the shift board and AED map (models/readcache.py); 0: off
    read_cache_s: float = Field(default=2.0, ge=0, le=60)

    dispatch: DispatchPolicy = DispatchPolicy()

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL (e.g. postgresql+psycopg://user@host/db)") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("wechat_aes_key")
    @classmethod
    def _check_aes(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or v.get_secret_value() == "":
            return None
        if len(v.get_secret_value()) != 43:
            raise ValueError("must be the 43-character EncodingAESKey from the WeChat console")
        return v

    @field_validator("wechat_aes_key")
    @classmethod
    def _check_aes_base64(cls, v: SecretStr | None) -> SecretStr | None:
        # the console's key is base64 of 32 bytes without its "=": catch a mistyped one at
        # start-up, not on the first encrypted message
        if v is None:
            return None
        import base64
        import binascii

        try:
            key = base64.b64decode(v.get_secret_value() + "=", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be the base64 EncodingAESKey from the WeChat console") from None
        if len(key) != 32:
            raise ValueError("must decode to 32 bytes")
        return v

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return v

    def signing_key(self, purpose: str) -> bytes:
        """A key for one purpose (cookies, volunteer links), HMAC-SHA256-derived from
        CONSOLE_SECRET, or from WECHAT_APP_SECRET when that is unset: one secret to keep, and
        a key leaked for one purpose does not sign for another."""
        import hashlib
        import hmac

        root = (self.console_secret or self.wechat_app_secret).get_secret_value().encode()
        return hmac.new(root, f"redgrid:{purpose}".encode(), hashlib.sha256).digest()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'redgrid.db').resolve()}"

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.var_dir / "redis.sock").resolve()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        var = "__".join(loc).upper() or "?"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {var}: {msg}") from None
