"""The conversation engine: one inbound message in, one reply out (channel-agnostic).

Matching is pure (bot/commands.py); handling is here. Each message is one database
transaction; what it leaves for the background (messages, reminders, waves, campaigns) is
collected as Effects and handed to RQ only after the commit.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import redis
from aiohttp import web
from sqlalchemy import bindparam
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from bot import copy, dialogs
from bot.commands import CLICK_KEYS, Cmd, Parsed, Ref, mask_name, mask_phone, parse
from bot.dialogs import Turn
from bot.inbound import Inbound
from bot.state import Dialog, DialogStore, Listing
from bot.views import age_label, clip, fit, hours_label, when_label
from dispatcher import aed as aed_rank
from dispatcher.effects import Effects
from dispatcher.geo import amap_link, format_distance, tencent_map_link
from dispatcher.services import Shift, ShiftBoard, StatusView
from models import interactions, readcache
from models.db import is_read_only_refusal, read_transaction, transaction, utcnow
from models.outbox import queue_message
from models.readcache import ReadCache
from models.settings import Settings
from models.tables import AED, AEDStatus, Campaign, GridUnit, Person, PersonStatus, Task

log = logging.getLogger(__name__)

PAGE = 5  # shifts per page: five lines with distances fit well inside one reply
SHIFTS_MAX = 50  # shifts 班次/更多 page through at most
VOLUNTEER_CMDS = {Cmd.shifts, Cmd.more, Cmd.signup, Cmd.cancel, Cmd.accept, Cmd.decline,
                  Cmd.checkin, Cmd.checkout, Cmd.mine}  # fmt: skip
CMD_WORD = {Cmd.broadcast: "广播", Cmd.status: "状态", Cmd.report: "上报"}
INTERACTION_RESOLUTION = timedelta(minutes=1)  # how stale Person.last_interaction_at may be


class Conversation:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        redis_client: redis.Redis,
        clock: object = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis_client
        self.tz = ZoneInfo(settings.tz)
        self.store = DialogStore(redis_client, ttl_s=settings.dialog_ttl_s)
        self.cache = ReadCache(settings.read_cache_s)
        self.clock = clock
        # openid -> the interaction time this process last put in the buffer (_touch)
        self._touched: dict[str, datetime] = {}

    # --- the Handler protocol ---------------------------------------------------------------

    def handle(self, inbound: Inbound, *, writer: bool = False) -> str | None:
        """Answer one message. Most messages only read (帮助, 班次, 我的, a location...): they are
        tried as a read-only transaction first, which on SQLite need not queue for the write
        lock. ``writer``: the caller knows it needs more (``try_read_only`` said so)."""
        if not writer:
            done, reply = self.try_read_only(inbound)
            if done:
                return reply
        return self._handle(inbound, read_only=False)

    def state_keys(self, user: str) -> list[str]:
        """The Redis keys a message from ``user`` reads first (the webhook may read them with
        its dedupe claim and pass the values to ``try_read_only``)."""
        return self.store.state_keys(user)

    def try_read_only(self, inbound: Inbound, state: list[Any] | None = None) -> tuple[bool, str | None]:
        """(True, the reply) when the message could be answered in a read-only transaction;
        (False, None) when it needs a writer: a new, returning or owed person, an open dialog,
        a command that writes. Nothing has been changed then. Never blocks on a lock, so the
        webhook may run it on its event loop (bot/webhook.py). ``state``: the values of
        ``state_keys``, when the caller has just read them."""
        if not _may_only_read(inbound):
            return False, None
        if state is None:
            # read now, not lazily: a retry below then starts from the same state, not from
            # what the first attempt wrote (更多 would skip a page)
            state = self.redis.mget(self.state_keys(inbound.user))  # type: ignore[assignment]
        try:
            return True, self._read_only_turn(inbound, state)
        except _NeedsWrite:
            return False, None
        except DBAPIError as exc:
            if not is_read_only_refusal(exc):
                raise
            # a path wrongly thought read-only: the database refused the write, nothing is lost
            log.warning("read-only turn tried to write; retried as a writer")
            return False, None

    def _read_only_turn(self, inbound: Inbound, state: list[Any]) -> str | None:
        try:
            return self._handle(inbound, read_only=True, state=state)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # the database went away and came back (a restart): the pool has let go of its
            # old connections; nothing was written, so once more on a new one
            log.warning("database connection lost; read-only turn retried")
            return self._handle(inbound, read_only=True, state=state)

    def _handle(self, inbound: Inbound, *, read_only: bool, state: list[Any] | None = None) -> str | None:
        fx = Effects()
        now = self.clock()  # type: ignore[operator]
        if not (inbound.kind == "event" and inbound.event == "unsubscribe"):
            # first, before the person's deferred messages are looked for (jobs/outbound.py)
            self._touch(inbound.user, now)
        seen = readcache.snapshot()
        with (read_transaction if read_only else transaction)(self.sessions) as session:
            person = self._person(session, inbound, now, fx, read_only=read_only)
            # this message's view of the sender's dialog state: one Redis round trip to read it
            turn = Turn(inbound, session, person, fx, now, self.tz, self.store.for_user(inbound.user, state),
                        self.settings, seen)
            reply = self._route(turn, read_only=read_only)
        self._apply(fx, urgent=inbound.text.strip().lower() in ("急救", "sos"))
        return clip(reply) if reply else None

    def _touch(self, openid: str, now: datetime) -> None:
        """Record that ``openid`` wrote to us: buffered in Redis and written to the person row
        by a periodic flush (models/interactions.py), so a lookup stays a reader and a turn's
        transaction writes only what it changed. At most once a minute per person here."""
        if not _interaction_stale(self._touched.get(openid), now):
            return
        if len(self._touched) > 100_000:  # a day's senders at most: bounded, cheap to rebuild
            self._touched.clear()
        try:
            interactions.record(self.redis, openid, now)
            self._touched[openid] = now
        except redis.RedisError:
            # the 48-hour window is then judged from an older time: a send deferred, never
            # one outside the window
            log.warning("could not record an interaction time now")

    def deliver_late(self, user: str, text: str) -> None:
        """A reply that missed WeChat's 5-second window goes as a customer-service message."""
        fx = Effects()
        with transaction(self.sessions) as session:
            person = session.exec(select(Person).where(Person.openid == user)).first()
            if person is None or person.id is None:
                return
            row = queue_message(
                session, person_id=person.id, purpose="late_reply", target=uuid.uuid4().hex[:12], text=text
            )
            if row is not None and row.id is not None:
                fx.deliveries.append(row.id)
        self._apply(fx)

    # --- plumbing ---------------------------------------------------------------------------

    def _apply(self, fx: Effects, *, urgent: bool = False) -> None:
        if not fx:
            return
        from jobs.effects import apply

        try:
            apply(self.redis, fx, urgent=urgent)
        except redis.RedisError:
            # committed work is not lost: the reconciler re-creates missing jobs from the DB
            log.warning("could not enqueue effects now; the reconciler will pick them up")

    def _person(self, session: Session, inbound: Inbound, now: datetime, fx: Effects, *,
                read_only: bool = False) -> Person:  # fmt: skip
        from jobs.outbound import release_deferred

        if read_only:
            # the row itself, read-only (no ORM object: building one cost more than the query):
            # it answers every attribute a reading turn asks of a Person
            found = session.connection().execute(_person_query(row=True), {"openid": inbound.user}).first()
            if found is None or found.deferred or not found.subscribed:
                raise _NeedsWrite
            return found  # type: ignore[no-any-return, return-value]
        row = session.exec(_person_query(), params={"openid": inbound.user}).first()
        person, deferred = row if row is not None else (None, False)
        if person is None:
            # created now: with its interaction time, as the row is written anyway
            person = Person(openid=inbound.user, status=PersonStatus.pending, subscribed=True,
                            last_interaction_at=now)
        elif (deferred or not person.subscribed) and not (inbound.kind == "event" and inbound.event == "unsubscribe"):
            # back (a message from someone we thought gone), or messages waiting for this very
            # interaction: the row is the record they are sent by. Otherwise the time is
            # buffered as the turn starts (_touch), at most once a minute; the 48-hour window is
            # then judged at most a minute short: never a send outside it.
            person.subscribed = True
            person.last_interaction_at = now
        if person.id is None:
            session.add(person)
            session.flush()
        if deferred and person.id is not None and inbound.event != "unsubscribe":
            fx.deliveries += release_deferred(session, person_id=person.id, now=now)
        return person

    # --- routing ----------------------------------------------------------------------------

    def _route(self, turn: Turn, *, read_only: bool = False) -> str | None:
        ib = turn.inbound
        user = ib.user
        if ib.kind == "event":
            return self._event(turn)
        dialog = turn.store.load(user)
        if read_only and dialog is not None:
            raise _NeedsWrite  # a dialog step may write; nothing has been changed yet
        if ib.kind == "location":
            if dialog and (dialog.name, dialog.step) in dialogs.LOCATION_STEPS:
                return dialogs.STEPS[dialog.name](turn, dialog)
            return self._location(turn)
        if ib.kind != "text":
            return copy.MEDIA.format(what=copy.MEDIA_WHAT.get(ib.kind, "消息"))
        parsed = parse(ib.text)
        if dialog is not None and dialog.name not in dialogs.STEPS:
            # a dialog that only waits for a location (SOS, check-in) ends with any text
            turn.store.clear(user)
            dialog = None
        if dialog is not None:
            return self._in_dialog(turn, dialog, parsed)
        expired = turn.store.expired(user)
        if parsed is None:
            if expired:
                name = copy.DIALOG_NAMES.get(expired, expired)
                return copy.DIALOG_EXPIRED.format(name=name)
            return copy.UNKNOWN
        return self._command(turn, parsed)

    def _in_dialog(self, turn: Turn, dialog: Dialog, parsed: Parsed | None) -> str:
        name = copy.DIALOG_NAMES.get(dialog.name, dialog.name)
        prompt = dialogs.PROMPTS[dialog.name](turn, dialog)
        confirm_step = dialog.name == "broadcast" and dialog.step == "confirm"
        if parsed is not None and not confirm_step:
            if parsed.cmd == Cmd.quit:
                turn.store.clear(turn.inbound.user)
                return copy.QUIT_DONE.format(name=name)
            if parsed.cmd == Cmd.help:
                return f"{self._help(turn.person)}\n\n" + copy.DIALOG_RESUME.format(name=name, prompt=prompt)
            if parsed.cmd.value == dialog.name or parsed.ref is not None or parsed.cmd in VOLUNTEER_CMDS | {
                Cmd.broadcast, Cmd.status, Cmd.report, Cmd.register, Cmd.aed, Cmd.sos
            }:
                if parsed.cmd == Cmd.sos:
                    turn.store.clear(turn.inbound.user)
                    return self._command(turn, parsed) or copy.UNKNOWN
                return copy.DIALOG_RESUME.format(name=name, prompt=prompt)
        return dialogs.STEPS[dialog.name](turn, dialog)

    def _event(self, turn: Turn) -> str | None:
        ib, person = turn.inbound, turn.person
        match ib.event:
            case "subscribe":
                if person.is_volunteer and person.name:
                    return copy.WELCOME_BACK.format(name=person.name)
                return copy.WELCOME
            case "unsubscribe":
                person.subscribed = False
                turn.session.add(person)
                from dispatcher import services

                services.withdraw_offers(turn.session, turn.fx, person_id=turn.pid, now=turn.now)
                turn.store.clear(ib.user)
                return None
            case "click":
                cmd = CLICK_KEYS.get(ib.event_key)
                return self._command(turn, Parsed(cmd)) if cmd else copy.UNKNOWN
            case "location":
                # WeChat's periodic position report: kept only where the person agreed
                if person.share_live_location and ib.lat is not None and ib.lng is not None:
                    person.live_lat, person.live_lng, person.live_at = ib.lat, ib.lng, turn.now
                    turn.session.add(person)
                return None
            case _:
                return None

    # --- commands ---------------------------------------------------------------------------

    def _command(self, turn: Turn, parsed: Parsed) -> str | None:
        person, cmd = turn.person, parsed.cmd
        if cmd in VOLUNTEER_CMDS:
            if not person.is_volunteer:
                return copy.NOT_ALLOWED["volunteer"]
            if person.status != PersonStatus.active:
                label = copy.STATUS_LABEL.get(person.status.value, person.status.value)
                return copy.NOT_ALLOWED["volunteer_inactive"].format(status=label)
        if cmd == Cmd.report and not person.is_grid_worker:
            return copy.NOT_ALLOWED["grid_worker"]
        if cmd in (Cmd.broadcast, Cmd.status) and dialogs.coordinator_scope(turn.session, person) is None:
            return copy.NOT_ALLOWED["coordinator"].format(cmd=CMD_WORD[cmd])
        match cmd:
            case Cmd.help:
                return self._help(person)
            case Cmd.quit:
                return copy.QUIT_NOTHING
            case Cmd.register:
                d = Dialog("register", "name")
                turn.save(d)
                return copy.REG_ASK_NAME
            case Cmd.report:
                return dialogs.rep_start(turn) or copy.NOT_ALLOWED["grid_worker"]
            case Cmd.broadcast:
                scope = dialogs.coordinator_scope(turn.session, person)
                assert scope is not None
                return dialogs.bc_start(turn, scope)
            case Cmd.status:
                return self._status(turn)
            case Cmd.shifts:
                return self._shifts(turn, page=0)
            case Cmd.more:
                listing = turn.store.load_listing(turn.inbound.user)
                if listing is None or listing.kind != "shifts":
                    return self._shifts(turn, page=0)
                return self._shifts(turn, page=listing.page + 1)
            case Cmd.signup | Cmd.cancel:
                return self._signup_or_cancel(turn, parsed)
            case Cmd.accept | Cmd.decline:
                return self._answer_offer(turn, parsed)
            case Cmd.checkin:
                return self._checkin(turn)
            case Cmd.checkout:
                return self._checkout(turn)
            case Cmd.mine:
                return self._mine(turn)
            case Cmd.aed:
                return copy.AED_ASK_LOCATION
            case Cmd.sos:
                return self._sos(turn)
        return copy.UNKNOWN

    def _when(self, task: Task | Shift, now: datetime) -> str:
        return when_label(task.starts_at, task.ends_at, now, self.tz)

    def _help(self, person: Person) -> str:
        lines = list(copy.HELP_LINES["all"])
        if person.is_volunteer:
            lines += copy.HELP_LINES["volunteer"]
        if person.is_grid_worker:
            lines += copy.HELP_LINES["grid_worker"]
        if person.is_coordinator:
            lines += copy.HELP_LINES["coordinator"]
        return "\n".join([copy.HELP_HEAD, *lines, copy.HELP_TAIL])

    def _task_ref(self, turn: Turn, ref: Ref, kinds: tuple[str, ...]) -> int:
        """A list position from the last list shown, else (or with a T) a task id."""
        listing = turn.store.load_listing(turn.inbound.user)
        if (
            not ref.is_task_id
            and listing is not None
            and listing.kind in kinds
            and 1 <= ref.number <= len(listing.task_ids)
        ):
            return listing.task_ids[ref.number - 1]
        # beyond the list: a task id, as messages say it ("取消 1024" after a promotion)
        return ref.number

    def _signup_or_cancel(self, turn: Turn, parsed: Parsed) -> str:
        from dispatcher import services

        word = "报名" if parsed.cmd == Cmd.signup else "取消"
        list_cmd = "班次" if parsed.cmd == Cmd.signup else "我的"
        if parsed.ref is None:
            return copy.PICK_NUMBER.format(cmd=word, list_cmd=list_cmd)
        kinds = ("shifts",) if parsed.cmd == Cmd.signup else ("mine", "shifts")
        task_id = self._task_ref(turn, parsed.ref, kinds)
        policy = self.settings.dispatch
        if parsed.cmd == Cmd.signup:
            out = services.sign_up(
                turn.session, turn.fx, person_id=turn.pid, task_id=task_id, now=turn.now, policy=policy
            )
            task = out.task
            if task is None:
                return copy.BAD_NUMBER.format(n=parsed.ref.number, list_cmd=list_cmd)
            when = self._when(task, turn.now)
            match out.status:
                case "accepted":
                    return copy.SIGNUP_OK.format(title=task.title, place=task.place, when=when)
                case "waitlisted":
                    return copy.SIGNUP_WAIT.format(pos=out.waitlist_pos)
                case "already":
                    return copy.SIGNUP_ALREADY.format(title=task.title, when=when)
                case "overlap":
                    clash = out.clash
                    assert clash is not None
                    other_when = self._when(clash, turn.now)
                    return copy.SIGNUP_OVERLAP.format(other=clash.title, when=other_when)
                case "not_eligible":
                    skills = "、".join(copy.SKILL_LABEL.get(s, s) for s in out.missing_skills) or "相应资质"
                    return copy.SIGNUP_SKILLS.format(skills=skills)
                case _:
                    return copy.SIGNUP_CLOSED
        out_c = services.cancel(
            turn.session, turn.fx, person_id=turn.pid, task_id=task_id, now=turn.now, policy=policy
        )
        match out_c.status:
            case "cancelled":
                task = out_c.task
                assert task is not None
                when = self._when(task, turn.now)
                return copy.CANCEL_OK.format(title=task.title, when=when)
            case "too_late":
                hours = hours_label(self.settings.dispatch.cancel_cutoff_s / 3600)
                return copy.CANCEL_LATE.format(hours=hours)
            case _:
                return copy.CANCEL_NONE

    def _answer_offer(self, turn: Turn, parsed: Parsed) -> str:
        from dispatcher import services

        word = "接受" if parsed.cmd == Cmd.accept else "拒绝"
        if parsed.ref is None:
            return copy.PICK_NUMBER.format(cmd=word, list_cmd="我的")
        task_id = parsed.ref.number
        policy = self.settings.dispatch
        from jobs import sos

        if sos.is_sos(turn.session, task_id):  # roles, the caller, stand-downs: jobs/sos.py
            return sos.answer(turn.session, turn.fx, person_id=turn.pid, task_id=task_id,
                              accept=parsed.cmd == Cmd.accept, now=turn.now, policy=policy)
        if parsed.cmd == Cmd.decline:
            out = services.decline_offer(
                turn.session, turn.fx, person_id=turn.pid, task_id=task_id, now=turn.now, policy=policy
            )
            if out.status in ("declined", "ok", "already"):
                return copy.DECLINE_OK.format(id=task_id)
            if out.status == "expired":
                return copy.ACCEPT_EXPIRED
            return copy.ACCEPT_NONE.format(id=task_id)
        out = services.accept_offer(
            turn.session, turn.fx, person_id=turn.pid, task_id=task_id, now=turn.now, policy=policy
        )
        match out.status:
            case "accepted":
                task = out.task
                assert task is not None
                when = self._when(task, turn.now)
                text = copy.ACCEPT_OK.format(title=task.title, when=when, place=task.place or "见任务说明")
                if out.contact is not None:
                    role = "网格员" if out.contact.is_grid_worker else "联系人"
                    text += copy.ACCEPT_CONTACT.format(
                        role=role, name=mask_name(out.contact.name), phone=mask_phone(out.contact.phone)
                    )
                return text + "\n" + copy.ACCEPT_TAIL
            case "full":
                return copy.ACCEPT_FULL
            case "expired":
                return copy.ACCEPT_EXPIRED
            case "already":
                return copy.ACCEPT_ALREADY
            case _:
                return copy.ACCEPT_NONE.format(id=task_id)

    def _checkin(self, turn: Turn) -> str:
        from dispatcher import services

        out = services.check_in(
            turn.session, turn.fx, person_id=turn.pid, now=turn.now, policy=self.settings.dispatch
        )
        task = out.task
        if out.status in ("checked_in", "already") and task is not None:
            turn.save(Dialog("checkin_location", "location", {"task_id": task.id}))
            tmpl = copy.CHECKIN_OK if out.status == "checked_in" else copy.CHECKIN_ALREADY
            return tmpl.format(title=task.title, when=self._when(task, turn.now))
        return copy.CHECKIN_NONE

    def _checkout(self, turn: Turn) -> str:
        from dispatcher import services

        out = services.check_out(
            turn.session, turn.fx, person_id=turn.pid, now=turn.now, policy=self.settings.dispatch
        )
        if out.status != "checked_out":
            return copy.CHECKOUT_NONE
        return copy.CHECKOUT_OK.format(hours=hours_label(out.hours), year=hours_label(out.hours_year))

    def _shifts(self, turn: Turn, *, page: int) -> str:
        from dispatcher import services

        # one row past this page is enough to know whether there is a next page (of the 50 at most
        # ever listed): geodesics are then computed only for the rows that can be on it
        start = page * PAGE
        views = services.open_shifts(turn.session, person=turn.person, now=turn.now, days=7,
                                     limit=min(SHIFTS_MAX, start + PAGE + 1), board=self._board(turn))
        if not views:
            return copy.SHIFTS_NONE
        if start >= len(views):
            return copy.SHIFTS_END
        chunk = views[start : start + PAGE]
        lines = []
        for i, v in enumerate(chunk, start + 1):
            t = v.task
            state = (
                copy.SHIFT_MINE if v.my_status in ("accepted", "checked_in")
                else copy.SHIFT_NEED.format(n=v.open_slots) if v.open_slots > 0
                else copy.SHIFT_FULL
            )  # fmt: skip
            dist = f" · {format_distance(v.distance_m)}" if v.distance_m is not None else ""
            lines.append(f"{i} {t.title} · {v.place} · {self._when(t, turn.now)} · {state}{dist}")
        tail = copy.SHIFTS_TAIL + (copy.SHIFTS_MORE if start + PAGE < len(views) else "")
        text, _n = fit(copy.SHIFTS_HEAD, lines, tail)
        turn.store.save_listing(
            turn.inbound.user, Listing("shifts", [v.task.id for v in views[: start + PAGE]], page)
        )
        return text

    def _mine(self, turn: Turn) -> str:
        from dispatcher import services

        s = services.my_summary(turn.session, person_id=turn.pid, now=turn.now)
        lines: list[str] = []
        ids: list[int] = []
        for i, (a, t) in enumerate(s.upcoming, 1):
            label = copy.ASSIGNMENT_LABEL.get(a.status.value, a.status.value).format(pos=a.waitlist_pos)
            lines.append(f"{i} {t.title} · {self._when(t, turn.now)} · {label}")
            ids.append(int(t.id or 0))
        offer_lines = [
            f"T{t.id} {t.title} · {self._when(t, turn.now)}（回复「接受 {t.id}」）"
            for _a, t in s.offers
        ]
        from bot.console.volunteer import volunteer_link

        link = copy.MINE_LINK.format(url=volunteer_link(self.settings, person_id=turn.pid or 0))
        if not lines and not offer_lines:
            return "\n".join([copy.MINE_NONE, copy.MINE_HOURS.format(hours=hours_label(s.hours_year)), link])
        body = []
        if lines:
            body += [copy.MINE_HEAD, *lines]
        if offer_lines:
            body += [copy.MINE_OFFERS, *offer_lines]
        tail = copy.MINE_HOURS.format(hours=hours_label(s.hours_year)) + ("\n" + copy.MINE_TAIL if lines else "")
        tail += "\n" + link
        turn.store.save_listing(turn.inbound.user, Listing("mine", ids))
        text, _ = fit("", body, tail)
        return text

    def _location(self, turn: Turn) -> str:
        ib = turn.inbound
        assert ib.lat is not None and ib.lng is not None
        dialog = turn.store.load(ib.user)
        if dialog is not None and dialog.name == "sos":
            return self._sos_location(turn, ib.lat, ib.lng)
        if dialog is not None and dialog.name == "checkin_location":
            from dispatcher import services

            turn.store.clear(ib.user)
            out = services.check_in(
                turn.session, turn.fx, person_id=turn.pid, now=turn.now, lat=ib.lat, lng=ib.lng,
                policy=self.settings.dispatch,
            )
            if out.status == "too_far" and out.distance_m is not None:
                turn.save(dialog)
                return copy.CHECKIN_FAR.format(distance=format_distance(out.distance_m))
            if out.distance_m is not None:
                return copy.CHECKIN_HERE.format(distance=format_distance(out.distance_m))
        text = self._nearest_aeds(turn, ib.lat, ib.lng)
        if turn.person.is_volunteer and turn.person.status == PersonStatus.active:
            from dispatcher import services

            views = services.open_shifts(turn.session, person=turn.person, now=turn.now, lat=ib.lat, lng=ib.lng,
                                         limit=3, board=self._board(turn))
            lines = [
                f"{i} {v.task.title} · {self._when(v.task, turn.now)}"
                + (f" · {format_distance(v.distance_m)}" if v.distance_m is not None else "")
                for i, v in enumerate(views[:3], 1)
            ]
            if lines:
                turn.store.save_listing(ib.user, Listing("shifts", [v.task.id for v in views[:3]]))
                extra, _ = fit(copy.NEARBY_SHIFTS, lines, copy.SHIFTS_TAIL, limit=2000 - len(text.encode()))
                text += "\n\n" + extra
        return text

    def _board(self, turn: Turn) -> ShiftBoard:
        """The week's shift board, shared by this process's messages for a moment (readcache)."""
        from dispatcher import services

        return self.cache.get("shift_board", lambda: services.shift_board(turn.session, now=turn.now, days=7),
                              tables=("task", "assignment", "grid_unit"), since=turn.seen)

    def _aed_map(self, session: Session) -> list[aed_rank.AEDPoint]:
        # columns, not ORM objects: building ~100 AED objects cost more than ranking them
        rows = session.exec(
            select(col(AED.id), col(AED.name), col(AED.lat), col(AED.lng), col(AED.hours))
            .where(AED.status == AEDStatus.in_service)
        ).all()
        return [aed_rank.AEDPoint(a_id or 0, name, a_lat, a_lng, hours, True)
                for a_id, name, a_lat, a_lng, hours in rows]  # fmt: skip

    def _nearest_aeds(self, turn: Turn, lat: float, lng: float, *, fresh: bool = False) -> str:
        """``fresh``: from the database now, not this process's recent map (an emergency must
        not be sent to an AED another process has just marked faulty)."""
        d = 0.1  # ~10 km box; the city's AEDs (a few hundred at most) are ranked in memory
        everywhere = (self._aed_map(turn.session) if fresh
                      else self.cache.get("aed_map", lambda: self._aed_map(turn.session), tables=("aed",),
                                          since=turn.seen))
        points = [p for p in everywhere if abs(p.lat - lat) <= d and abs(p.lng - lng) <= d]
        local = turn.now.astimezone(self.tz).time()
        hits = aed_rank.nearest(points, lat, lng, local, k=3)
        if not hits:
            return copy.AED_NONE + "\n" + copy.AED_TAIL
        lines = []
        for i, h in enumerate(hits, 1):
            hours = aed_rank.hours_label(h.aed.hours)
            if not h.open_now and h.opens_at is not None:
                hours = copy.AED_CLOSED.format(opens=h.opens_at.strftime("%H:%M"))
            lines.append(
                copy.AED_LINE.format(
                    i=i,
                    name=h.aed.name,
                    distance=format_distance(h.distance_m),
                    hours=hours,
                    link=tencent_map_link(h.aed.lat, h.aed.lng, h.aed.name),
                    amap=amap_link(h.aed.lat, h.aed.lng, h.aed.name),
                )
            )
        return "\n".join([copy.AED_HEAD, *lines, copy.AED_TAIL])

    def _sos(self, turn: Turn) -> str:
        turn.save(Dialog("sos", "location"))
        return copy.SOS_START

    def _sos_location(self, turn: Turn, lat: float, lng: float) -> str:
        """"Call 120" first, always; the first-aiders are alerted by the worker after commit."""
        from jobs import sos

        turn.store.clear(turn.inbound.user)
        started = sos.start(turn.session, turn.fx, caller=turn.person, lat=lat, lng=lng, now=turn.now,
                            policy=self.settings.dispatch, label=turn.inbound.label)  # fmt: skip
        status = copy.SOS_STATUS[started.status].format(id=started.task_id)
        aeds = self._nearest_aeds(turn, lat, lng, fresh=True).removesuffix("\n" + copy.AED_TAIL)
        return "\n".join([copy.SOS_CALL_FIRST, status, copy.SOS_CPR, aeds])

    def _status(self, turn: Turn) -> str:
        from dispatcher import services

        scope = dialogs.coordinator_scope(turn.session, turn.person)
        assert scope is not None
        view = services.coordinator_status(turn.session, scope_grid_id=int(scope.id or 0), now=turn.now)
        lines = self._status_lines(turn, view)
        campaigns = turn.session.exec(
            select(Campaign)
            .where(Campaign.created_by_id == turn.person.id)
            .order_by(col(Campaign.id).desc())
            .limit(3)
        ).all()
        if campaigns:
            lines.append(copy.STATUS_CAMPAIGNS)
            lines += [
                copy.STATUS_CAMPAIGN.format(
                    id=c.id, sent=c.sent, targeted=c.targeted, deferred=c.deferred, failed=c.failed,
                    state=copy.CAMPAIGN_STATE.get(c.status.value, c.status.value),
                )
                for c in campaigns
            ]
        text, _ = fit(copy.STATUS_HEAD.format(scope=scope.name), lines, "")
        return text


    def _status_lines(self, turn: Turn, view: StatusView) -> list[str]:
        lines: list[str] = []
        if view.open_reports:
            lines.append(copy.STATUS_REPORTS.format(n=len(view.open_reports)))
            for r in view.open_reports[:5]:
                grid = turn.session.get(GridUnit, r.report.grid_id)
                state = copy.REPORT_STATE.get(r.report.status.value, r.report.status.value)
                if r.task is not None:
                    state += f" {r.task.accepted_count}/{r.task.slots}"
                lines.append(
                    copy.STATUS_REPORT.format(
                        id=r.report.id, category=r.report.category, grid=grid.name if grid else "",
                        age=age_label(r.age), state=state,
                    )
                )
        else:
            lines.append(copy.STATUS_NO_REPORTS)
        if view.unfilled:
            lines.append(copy.STATUS_UNFILLED.format(n=len(view.unfilled)))
            lines += [
                copy.STATUS_SHIFT.format(
                    title=t.task.title, when=self._when(t.task, turn.now),
                    filled=t.accepted, slots=t.task.slots,
                )
                for t in view.unfilled[:5]
            ]
        else:
            lines.append(copy.STATUS_NO_UNFILLED)
        lines.append(copy.STATUS_TODAY.format(n=len(view.today), checked_in=sum(t.checked_in for t in view.today)))
        return lines


class _NeedsWrite(Exception):
    """A turn begun read-only needs to write: it is run again in a writing transaction."""


# What never writes to the database when no dialog is open (a dialog is checked in _route).
READ_ONLY_CMDS = frozenset({Cmd.help, Cmd.shifts, Cmd.more, Cmd.mine, Cmd.aed})


def _may_only_read(inbound: Inbound) -> bool:
    if inbound.kind == "location":
        return True  # nearest AEDs and shifts; a location some dialog waits for is caught in _route
    if inbound.kind != "text":
        return False
    parsed = parse(inbound.text)
    return parsed is None or parsed.cmd in READ_ONLY_CMDS


def _interaction_stale(last: datetime | None, now: datetime) -> bool:
    return last is None or not (timedelta(0) <= now - last < INTERACTION_RESOLUTION)


@cache
def _person_query(*, row: bool = False) -> Any:
    """The sender and whether they have deferred deliveries, in one statement (most have none):
    as a Person and a flag, or (``row``) as one row of the person's columns and ``deferred``.

    Built once: constructing the expression cost more than running it (~0.25 ms a message).
    """
    from jobs.outbound import has_deferred

    if row:
        return select(*Person.__table__.c, has_deferred(Person.id).label("deferred")).where(  # type: ignore[attr-defined]
            Person.openid == bindparam("openid"))
    return select(Person, has_deferred(Person.id)).where(Person.openid == bindparam("openid"))


def build_handler(app: web.Application) -> Conversation:
    from bot.app import REDIS, SESSIONS, SETTINGS

    return Conversation(settings=app[SETTINGS], sessions=app[SESSIONS], redis_client=app[REDIS])


