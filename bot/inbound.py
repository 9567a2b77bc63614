"""A channel-agnostic inbound message: what the conversation engine sees.

The WeChat adapter turns XML into this (GCJ-02 already converted to WGS-84); another
messenger would do the same. The engine answers with text, or None ("nothing to say now").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from models.db import utcnow

Kind = Literal["text", "location", "event", "image", "voice", "video", "link", "unknown"]


@dataclass(frozen=True)
class Inbound:
    user: str  # the channel's user id (WeChat openid)
    kind: Kind
    text: str = ""  # text, or a voice message's Recognition
    event: str = ""  # subscribe | unsubscribe | click | location | scan | view (lower case)
    event_key: str = ""  # CLICK key
    lat: float | None = None  # WGS-84
    lng: float | None = None
    label: str = ""  # the place name WeChat attaches to a location
    msg_id: str = ""
    at: datetime = field(default_factory=utcnow)
    channel: str = "wechat"
