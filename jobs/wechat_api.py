"""The one place that calls the WeChat API (wechatpy's WeChatClient underneath).

- The access token lives in Redis (wechatpy's ``RedisStorage``), shared by every worker; a
  refresh takes a Redis lock, so two workers never fetch at once (each fetch invalidates the
  token the others hold).
- Every HTTP call, the token fetch included, has ``settings.wechat_timeout_s``: wechatpy's own
  ``_fetch_access_token`` passes none, so the timeout is put on the HTTP session itself.
- The base URL, token URL included, comes from ``settings.wechat_api_base``: wechatpy builds
  API URLs from ``API_BASE_URL`` but hard-codes the token URL in ``fetch_access_token``.
- Errors become ``WeChatAPIError(errcode, errmsg)``; no answer, an HTTP error or a timeout
  becomes ``WeChatUnavailable`` (nothing known to be sent: safe to retry).
- 40001/42001/40014 (token invalid or expired): refresh once and repeat the call once; a second
  failure is raised. wechatpy's own auto-retry is off: it would loop on a token that stays bad.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import requests
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session.redisstorage import RedisStorage

from models.exceptions import WeChatAPIError, WeChatUnavailable
from models.settings import Settings

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
TOKEN_PREFIX = "wechatpy"


class _TimeoutSession(requests.Session):
    """A requests session whose every call has a timeout unless one is given."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


class _Client(WeChatClient):  # type: ignore[misc]
    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        super().__init__(
            settings.wechat_app_id,
            settings.wechat_app_secret.get_secret_value(),
            session=RedisStorage(connection, prefix=TOKEN_PREFIX),
            timeout=settings.wechat_timeout_s,
            auto_retry=False,
        )
        base = settings.wechat_api_base.rstrip("/")
        self.API_BASE_URL = f"{base}/cgi-bin/"
        self._token_url = f"{base}/cgi-bin/token"
        self._http = _TimeoutSession(settings.wechat_timeout_s)
        self._redis = connection
        self._lock_timeout = settings.wechat_timeout_s * 2 + 5

    def fetch_access_token(self) -> dict[str, Any]:
        return self._fetch_access_token(  # type: ignore[no-any-return]
            url=self._token_url,
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )

    @property
    def access_token(self) -> str:
        token = self.session.get(self.access_token_key)
        if token:
            # The Redis key expires with the token (wechatpy stores it with expires_in), so a
            # token present is one some worker fetched and believes valid.
            return str(token)
        return self.refresh(bad=None)

    def refresh(self, *, bad: str | None) -> str:
        """Fetch a new token unless another worker already replaced ``bad`` meanwhile."""
        with self._redis.lock(f"{TOKEN_PREFIX}:{self.appid}:refresh", timeout=self._lock_timeout,
                              blocking_timeout=self._lock_timeout):
            current = self.session.get(self.access_token_key)
            if current and current != bad:
                return str(current)
            log.info("fetching a new WeChat access token")
            self.fetch_access_token()
            return str(self.session.get(self.access_token_key))


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, WeChatClientException):
        if exc.errcode is None:
            status = getattr(exc.response, "status_code", None)
            return WeChatUnavailable(f"HTTP {status}")
        return WeChatAPIError(int(exc.errcode), str(exc.errmsg or ""))
    return WeChatUnavailable(type(exc).__name__)


class WeChatAPI:
    """Customer-service, template and menu calls, with the token policy above."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.client = _Client(settings, connection)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        for attempt in (1, 2):
            token = None
            try:
                token = self.client.access_token
                return fn(*args, **kwargs)  # type: ignore[no-any-return]
            except (WeChatClientException, requests.RequestException) as exc:
                err = _translate(exc)
                if isinstance(err, WeChatAPIError) and err.errcode in TOKEN_ERRORS and attempt == 1:
                    log.info("WeChat token rejected (%s): refreshing once", err.errcode)
                    try:
                        self.client.refresh(bad=token)
                    except (WeChatClientException, requests.RequestException) as exc2:
                        raise _translate(exc2) from exc2
                    continue
                raise err from exc
        raise AssertionError("unreachable")

    def send_text(self, openid: str, text: str) -> dict[str, Any]:
        return self._call(self.client.message.send_text, openid, text)

    def send_template(
        self, openid: str, template_id: str, data: dict[str, Any], url: str | None = None
    ) -> dict[str, Any]:
        return self._call(self.client.message.send_template, openid, template_id, data, url=url)

    def create_menu(self, menu: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.client.menu.create, menu)


def api() -> WeChatAPI:
    """This process's client (built once per process from its runtime)."""
    from jobs.runtime import runtime

    rt = runtime()
    client = rt.extras.get("wechat_api")
    if client is None:
        client = rt.extras["wechat_api"] = WeChatAPI(rt.settings, rt.redis)
    return client  # type: ignore[no-any-return]


def send_text(openid: str, text: str) -> dict[str, Any]:
    return api().send_text(openid, text)


def send_template(openid: str, template_id: str, data: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    return api().send_template(openid, template_id, data, url=url)


def create_menu(menu: dict[str, Any]) -> dict[str, Any]:
    return api().create_menu(menu)
