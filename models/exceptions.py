"""The one exceptions module for RedGrid's own errors."""

from __future__ import annotations


class RedGridError(Exception):
    """Base of every error RedGrid raises on purpose."""


class ConfigError(RedGridError):
    """A setting is missing or malformed; the message names the variable."""


class NotAllowed(RedGridError):
    """The person's roles do not allow this action."""


class NotFound(RedGridError):
    """The record asked for does not exist (or is outside the person's scope)."""


class Conflict(RedGridError):
    """The action clashes with the current state (full task, overlapping shift, ...)."""


class BadSignature(RedGridError):
    """A WeChat request whose signature, app id or timestamp does not hold."""


class BadMessage(RedGridError):
    """A WeChat request body that is not acceptable XML."""


class WeChatAPIError(RedGridError):
    """The WeChat API answered with a non-zero errcode."""

    def __init__(self, errcode: int, errmsg: str = "") -> None:
        super().__init__(f"WeChat errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatUnavailable(RedGridError):
    """The WeChat API could not be reached or answered with an HTTP error (5xx, timeout):
    nothing is known to have been sent, so the call may be retried."""


class WebhookRefused(RedGridError):
    """The webhook answered a simulated WeChat request with an error status."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(f"webhook answered HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class BadRecurrence(RedGridError):
    """A shift recurrence rule that is not "WEEKLY:<days>" (e.g. "WEEKLY:TU,FR")."""
