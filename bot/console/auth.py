"""Console credentials, lock-out, server-side sessions and CSRF tokens.

Passwords are hashed with argon2id (argon2-cffi): the current OWASP first choice, memory-hard,
and its PHC string carries its own parameters, so ``needs_rehash`` can upgrade old hashes on
the next successful login. (hashlib.scrypt would avoid a dependency but leaves parameter
encoding and upgrades to us.)

Sessions live in Redis under an unguessable id; the cookie holds that id signed with a key
derived from the settings (``Settings.signing_key``), HttpOnly and SameSite=Lax. Every
session carries its own CSRF token; every POST must echo it.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, Signer
from sqlmodel import Session, col, or_, select

from models.exceptions import NotAllowed, NotFound
from models.settings import Settings
from models.tables import AuditEntry, ConsoleLogin, Person, PersonStatus

_HASHER = PasswordHasher()  # argon2id with the library's current RFC 9106 "low memory" profile
# verified against when the login name is unknown, so both paths cost the same time
_DUMMY_HASH = _HASHER.hash("redgrid-not-a-password")
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


# --- login -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    person_id: int | None = None
    reason: str = ""  # "" | bad | locked | inactive
    locked_until: datetime | None = None


def find_coordinator(session: Session, login: str) -> Person | None:
    """A coordinator by openid or phone (the login name people know)."""
    login = login.strip()
    if not login:
        return None
    return session.exec(
        select(Person).where(or_(Person.openid == login, Person.phone == login), col(Person.is_coordinator))
        .order_by(col(Person.id))
    ).first()


def set_password(session: Session, *, person_id: int, password: str, now: datetime,
                 actor_id: int | None = None) -> ConsoleLogin:
    """Set (or reset) a coordinator's console password; clears any lock-out."""
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"person {person_id}")
    if not person.is_coordinator:
        raise NotAllowed("only coordinators have console logins")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password shorter than {MIN_PASSWORD} characters")
    row = session.get(ConsoleLogin, person_id) or ConsoleLogin(person_id=person_id, password_hash="")
    row.password_hash = hash_password(password)
    row.failed_logins = 0
    row.locked_until = None
    row.password_set_at = now
    session.add(row)
    session.add(AuditEntry(actor_id=actor_id, action="console.set_password", entity="person",
                           entity_id=person_id, detail={}, at=now))
    session.flush()
    return row


def authenticate(session: Session, *, login: str, password: str, now: datetime,
                 settings: Settings) -> LoginResult:
    """Check a login; counts failures and locks the account after ``console_max_failures``.

    A locked account answers "locked" even to the right password until the lock ends, so
    guessing cannot continue behind the lock.
    """
    person = find_coordinator(session, login)
    row = session.get(ConsoleLogin, person.id) if person is not None else None
    if person is None or row is None:
        _verify(_DUMMY_HASH, password)
        return LoginResult(False, reason="bad")
    if row.locked_until is not None and row.locked_until > now:
        return LoginResult(False, person.id, "locked", row.locked_until)
    if not _verify(row.password_hash, password):
        row.failed_logins += 1
        detail: dict[str, object] = {"failures": row.failed_logins}
        if row.failed_logins >= settings.console_max_failures:
            row.locked_until = now + timedelta(seconds=settings.console_lockout_s)
            row.failed_logins = 0
            detail["locked_until"] = row.locked_until.isoformat()
        session.add(row)
        session.add(AuditEntry(actor_id=person.id, action="console.login_failed", entity="person",
                               entity_id=person.id, detail=detail, at=now))
        if row.locked_until is not None and row.locked_until > now:
            return LoginResult(False, person.id, "locked", row.locked_until)
        return LoginResult(False, person.id, "bad")
    if person.status != PersonStatus.active:
        return LoginResult(False, person.id, "inactive")
    if _HASHER.check_needs_rehash(row.password_hash):
        row.password_hash = hash_password(password)
    row.failed_logins = 0
    row.locked_until = None
    row.last_login_at = now
    session.add(row)
    session.add(AuditEntry(actor_id=person.id, action="console.login", entity="person",
                           entity_id=person.id, detail={}, at=now))
    return LoginResult(True, person.id)


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# --- sessions --------------------------------------------------------------------------------


@dataclass
class WebSession:
    sid: str
    csrf: str
    person_id: int | None = None
    kind: str = "console"  # console | volunteer


class SessionStore:
    """Server-side sessions in Redis; the browser holds only a signed, random id."""

    def __init__(self, client: redis.Redis, settings: Settings, *, kind: str) -> None:
        self.redis = client
        self.kind = kind
        self.ttl = settings.console_session_ttl_s
        self.signer = Signer(settings.signing_key(f"session:{kind}"), salt="redgrid-session")

    def _key(self, sid: str) -> str:
        return f"web:{self.kind}:session:{sid}"

    def create(self, *, person_id: int | None) -> WebSession:
        s = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), person_id, self.kind)
        self.redis.set(self._key(s.sid), json.dumps({"csrf": s.csrf, "pid": person_id}), ex=self.ttl)
        return s

    def load(self, cookie: str | None) -> WebSession | None:
        if not cookie:
            return None
        try:
            sid = self.signer.unsign(cookie).decode()
        except (BadSignature, UnicodeDecodeError):
            return None
        raw = self.redis.get(self._key(sid))
        if raw is None:
            return None
        self.redis.expire(self._key(sid), self.ttl)  # idle timeout slides with use
        data = json.loads(raw)
        return WebSession(sid, data["csrf"], data.get("pid"), self.kind)

    def destroy(self, s: WebSession) -> None:
        self.redis.delete(self._key(s.sid))

    def cookie_value(self, s: WebSession) -> str:
        return self.signer.sign(s.sid.encode()).decode()


def csrf_ok(session: WebSession | None, supplied: str | None) -> bool:
    if session is None or not supplied:
        return False
    return hmac.compare_digest(session.csrf.encode(), supplied.encode())


# --- the demo ----------------------------------------------------------------------------------

DEMO_PASSWORD = "redgrid-demo"  # documented in the README, for the demo data only


def ensure_demo_logins(session: Session, *, now: datetime, password: str = DEMO_PASSWORD) -> int:
    """Give the demo's coordinators (openid ``demo-…``) the demo password, unless they have a
    login already (a password changed since is kept). Returns how many were set."""
    people = session.exec(
        select(Person).where(col(Person.is_coordinator), col(Person.openid).startswith("demo-"))
    ).all()
    have = set(session.exec(select(ConsoleLogin.person_id)).all())
    n = 0
    for p in people:
        if p.id is not None and p.id not in have:
            session.add(ConsoleLogin(person_id=p.id, password_hash=hash_password(password), password_set_at=now))
            n += 1
    if n:
        session.add(AuditEntry(actor_id=None, action="console.demo_logins", entity="person", entity_id=None,
                               detail={"count": n}, at=now))
    session.flush()
    return n
