"""Multi-step dialogs: register, report, broadcast. One question at a time, each answer
validated with a helpful re-prompt; state lives in Redis (bot/state.py) between messages.

Each dialog is a set of step functions ``step(turn, dialog, answer) -> reply``. A step
either re-asks (bad answer), moves ``dialog.step`` on and asks the next question, or
finishes (clears the dialog). ``prompt(turn, dialog)`` re-asks the current question, which
is how a resumed dialog picks up where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from bot import copy
from bot.commands import (
    mask_phone,
    normalize,
    parse_choices,
    parse_date,
    parse_number,
    parse_phone,
    parse_when,
)
from bot.inbound import Inbound
from bot.state import Dialog, DialogStore
from dispatcher import places
from dispatcher.effects import Effects
from dispatcher.geo import cell, haversine_m
from models.outbox import queue_message
from models.tables import (
    AED,
    AEDStatus,
    AuditEntry,
    Certificate,
    GridUnit,
    GridWorkerGrid,
    Level,
    Person,
    PersonStatus,
    Report,
    TaskKind,
    Urgency,
)

if TYPE_CHECKING:
    from models.settings import Settings


@dataclass
class Turn:
    """One inbound message being handled, with everything a step may touch."""

    inbound: Inbound
    session: Session
    person: Person
    fx: Effects
    now: datetime
    tz: tzinfo
    store: DialogStore
    settings: Settings
    # the read cache's write counts as this turn's transaction began (models/readcache.py)
    seen: Mapping[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return normalize(self.inbound.text)

    @property
    def pid(self) -> int:
        """The person's id (the engine flushes a new person before any step runs)."""
        assert self.person.id is not None
        return self.person.id

    @property
    def has_location(self) -> bool:
        return self.inbound.lat is not None and self.inbound.lng is not None

    def save(self, dialog: Dialog) -> None:
        self.store.save(self.person.openid or "", dialog)

    def finish(self) -> None:
        self.store.clear(self.person.openid or "")


Step = Callable[[Turn, Dialog], str]


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i} {s}" for i, s in enumerate(items, 1))


# --- register ------------------------------------------------------------------------------


def _skills_options() -> str:
    return "  ".join(f"{i} {label}" for i, (_, label) in enumerate(copy.SKILLS, 1))


def reg_prompt(turn: Turn, d: Dialog) -> str:
    match d.step:
        case "name":
            return copy.REG_ASK_NAME
        case "phone":
            return copy.REG_ASK_PHONE.format(name=d.data["name"])
        case "place":
            return copy.REG_ASK_PLACE
        case "place_pick":
            return copy.REG_PLACE_PICK.format(options=_numbered([o[1] for o in d.data["options"]]))
        case "skills":
            return copy.REG_ASK_SKILLS.format(options=_skills_options())
        case "expiry":
            return copy.REG_ASK_EXPIRY.format(skill=copy.SKILL_LABEL[d.data["pending"][0]])
        case _:
            return _reg_confirm_text(d)


def _reg_confirm_text(d: Dialog) -> str:
    skills = []
    for code in d.data.get("skills", []):
        label = copy.SKILL_LABEL[code]
        exp = d.data.get("expiry", {}).get(code)
        skills.append(f"{label}（至{exp}）" if exp else label)
    return copy.REG_CONFIRM.format(
        name=d.data["name"],
        phone=mask_phone(d.data["phone"]),
        grid=d.data["grid_name"],
        skills="、".join(skills) or copy.REG_NO_SKILLS,
    )


def _set_place(turn: Turn, d: Dialog, grid: GridUnit, lat: float | None = None, lng: float | None = None) -> str:
    place = places.place_of(turn.session, grid)
    d.data.update(
        grid_id=grid.id,
        grid_name=grid.name,
        lat=lat if lat is not None else grid.lat,
        lng=lng if lng is not None else grid.lng,
    )
    d.step = "skills"
    turn.save(d)
    return copy.REG_PLACE_FOUND.format(where=place.label) + "\n" + reg_prompt(turn, d)


def reg_step(turn: Turn, d: Dialog) -> str:
    text = turn.text
    match d.step:
        case "name":
            if not (2 <= len(text) <= 20) or any(ch.isdigit() for ch in text):
                return copy.REG_BAD_NAME
            d.data["name"], d.step = text, "phone"
        case "phone":
            phone = parse_phone(text)
            if phone is None:
                return copy.REG_BAD_PHONE
            d.data["phone"], d.step = phone, "place"
        case "place":
            if turn.has_location:
                lat, lng = turn.inbound.lat, turn.inbound.lng
                assert lat is not None and lng is not None
                grid = places.grid_at(turn.session, lat=lat, lng=lng)
                if grid is None:
                    return copy.REG_PLACE_FAR
                return _set_place(turn, d, grid, lat, lng)
            found = places.find_units(turn.session, text, levels=(Level.grid, Level.village))
            if not found:
                return copy.REG_PLACE_NONE.format(text=text[:20])
            if len(found) == 1 and found[0].level == Level.village:
                found = places.grids_under(turn.session, found[0], limit=8)
            if len(found) == 1:
                return _set_place(turn, d, found[0])
            if not found:
                return copy.REG_PLACE_NONE.format(text=text[:20])
            d.data["options"] = [(g.id, g.name) for g in found]
            d.step = "place_pick"
        case "place_pick":
            n = parse_number(text)
            options = d.data["options"]
            if n is None or not 1 <= n <= len(options):
                if turn.has_location or not text.isdigit():
                    d.step = "place"  # a new name or a location: search again
                    return reg_step(turn, d)
                return reg_prompt(turn, d)
            grid = turn.session.get(GridUnit, options[n - 1][0])
            assert grid is not None
            return _set_place(turn, d, grid)
        case "skills":
            picks = parse_choices(text, top=len(copy.SKILLS))
            if picks is None:
                return copy.REG_BAD_SKILLS
            codes = [copy.SKILLS[i - 1][0] for i in picks]
            d.data["skills"] = codes
            d.data["expiry"] = {}
            d.data["pending"] = [c for c in codes if c in copy.SKILLS_WITH_EXPIRY]
            d.step = "expiry" if d.data["pending"] else "confirm"
        case "expiry":
            code = d.data["pending"][0]
            if text == "0":
                d.data["skills"].remove(code)
            else:
                when = parse_date(text)
                if when is None:
                    return copy.REG_BAD_EXPIRY
                if when < turn.now.astimezone(turn.tz).date():
                    return copy.REG_PAST_EXPIRY
                d.data["expiry"][code] = when.isoformat()
            d.data["pending"].pop(0)
            d.step = "expiry" if d.data["pending"] else "confirm"
        case "confirm":
            if text in ("修改", "重填", "重新填写"):
                d.step, d.data = "name", {}
                turn.save(d)
                return copy.REG_ASK_NAME
            if text not in ("确认", "确定", "是", "好"):
                return copy.REG_CONFIRM_AGAIN
            was_volunteer = turn.person.is_volunteer
            _register(turn, d)
            turn.finish()
            return copy.REG_UPDATED if was_volunteer else copy.REG_DONE
    turn.save(d)
    return reg_prompt(turn, d)


def _register(turn: Turn, d: Dialog) -> None:
    p, data = turn.person, d.data
    p.name = data["name"]
    p.phone = data["phone"]
    p.home_grid_id = data["grid_id"]
    p.lat, p.lng = data["lat"], data["lng"]
    p.h3 = cell(p.lat, p.lng)
    p.is_volunteer = True
    if p.status in (PersonStatus.pending, PersonStatus.left):
        p.status = PersonStatus.active
    if not p.kinds:
        p.kinds = [k.value for k in TaskKind]
    turn.session.add(p)
    existing = {
        c.skill: c
        for c in turn.session.exec(select(Certificate).where(Certificate.person_id == p.id)).all()
    }
    declared = set(data["skills"])
    for code, _label in copy.SKILLS:  # only the skills the chat asks about are replaced
        row = existing.get(code)
        if code not in declared:
            if row is not None:
                turn.session.delete(row)
            continue
        exp = data["expiry"].get(code)
        expires_on = date.fromisoformat(exp) if exp else None
        if row is None:
            turn.session.add(Certificate(person_id=turn.pid, skill=code, expires_on=expires_on))
        else:
            row.expires_on = expires_on
            turn.session.add(row)


# --- report (grid workers) ------------------------------------------------------------------


def served_grids(session: Session, person_id: int) -> list[GridUnit]:
    return list(
        session.exec(
            select(GridUnit)
            .join(GridWorkerGrid, col(GridWorkerGrid.grid_id) == col(GridUnit.id))
            .where(GridWorkerGrid.person_id == person_id)
            .order_by(GridUnit.code)
        ).all()
    )


def rep_prompt(turn: Turn, d: Dialog) -> str:
    match d.step:
        case "category":
            return copy.REP_ASK_CATEGORY
        case "text":
            return copy.REP_ASK_TEXT
        case "place":
            grids = d.data["grids"]
            if len(grids) == 1:
                return copy.REP_ASK_PLACE_ONE.format(grid=grids[0][1])
            return copy.REP_ASK_PLACE_MANY.format(options=_numbered([g[1] for g in grids]))
        case "aed":
            return copy.REP_ASK_AED.format(options=_numbered([a[1] for a in d.data["aeds"]]))
        case "urgency":
            return copy.REP_ASK_URGENCY
        case "headcount":
            return copy.REP_ASK_HEADCOUNT
        case _:
            return copy.REP_ASK_WHEN


def rep_start(turn: Turn) -> str | None:
    grids = served_grids(turn.session, turn.person.id or 0)
    if not grids:
        return None
    d = Dialog("report", "category", {"grids": [(g.id, g.name) for g in grids]})
    turn.save(d)
    return rep_prompt(turn, d)


def rep_step(turn: Turn, d: Dialog) -> str:
    text = turn.text
    match d.step:
        case "category":
            n = parse_number(text)
            if n is None or not 1 <= n <= len(copy.REPORT_CATEGORIES):
                return copy.REP_BAD_CATEGORY
            d.data["category"], d.step = copy.REPORT_CATEGORIES[n - 1], "text"
        case "text":
            if not 2 <= len(text) <= 300:
                return copy.REP_BAD_TEXT
            d.data["text"], d.step = text, "place"
            if d.data["category"] == copy.AED_FAULT:
                aeds = _aeds_near_grids(turn.session, [g[0] for g in d.data["grids"]])
                if not aeds:
                    turn.finish()
                    return copy.REP_NO_AED
                d.data["aeds"], d.step = aeds, "aed"
        case "aed":
            n = parse_number(text)
            if n is None or not 1 <= n <= len(d.data["aeds"]):
                return rep_prompt(turn, d)
            return _report_faulty_aed(turn, d, d.data["aeds"][n - 1][0])
        case "place":
            grids = d.data["grids"]
            chosen: tuple[int, float | None, float | None] | None = None
            if turn.has_location:
                lat, lng = turn.inbound.lat, turn.inbound.lng
                assert lat is not None and lng is not None
                grid = places.grid_at(turn.session, lat=lat, lng=lng)
                if grid is None:
                    return copy.REP_PLACE_UNKNOWN
                if grid.id not in [g[0] for g in grids]:
                    return copy.REP_PLACE_OUTSIDE.format(grid=grid.name, mine="、".join(g[1] for g in grids))
                chosen = (grid.id or 0, lat, lng)
            elif len(grids) == 1 and text.lower() in copy.YES:
                chosen = (grids[0][0], None, None)
            else:
                n = parse_number(text)
                if n is not None and 1 <= n <= len(grids):
                    chosen = (grids[n - 1][0], None, None)
            if chosen is None:
                return rep_prompt(turn, d)
            grid_unit = turn.session.get(GridUnit, chosen[0])
            assert grid_unit is not None
            d.data["grid_id"] = grid_unit.id
            d.data["lat"] = chosen[1] if chosen[1] is not None else grid_unit.lat
            d.data["lng"] = chosen[2] if chosen[2] is not None else grid_unit.lng
            d.step = "urgency"
        case "urgency":
            if text not in ("1", "2", "一般", "紧急"):
                return copy.REP_BAD_URGENCY
            d.data["urgency"] = "urgent" if text in ("2", "紧急") else "routine"
            d.step = "headcount"
        case "headcount":
            n = 1 if text in ("", "默认", "1") else parse_number(text)
            if n is None or not 1 <= n <= 20:
                return copy.REP_BAD_HEADCOUNT
            d.data["headcount"], d.step = n, "when"
        case "when":
            when = parse_when(text, turn.now.astimezone(turn.tz))
            if when is None:
                return copy.REP_BAD_WHEN
            from dispatcher import services

            report, _task = services.create_report(
                turn.session,
                turn.fx,
                reporter_id=turn.pid,
                grid_id=d.data["grid_id"],
                category=d.data["category"],
                text=d.data["text"],
                lat=d.data["lat"],
                lng=d.data["lng"],
                urgency=Urgency(d.data["urgency"]),
                headcount=d.data["headcount"],
                needed_by=when.astimezone(UTC),
                now=turn.now,
                policy=turn.settings.dispatch,
            )
            turn.finish()
            return copy.REP_DONE.format(id=report.id)
    turn.save(d)
    return rep_prompt(turn, d)


def _aeds_near_grids(session: Session, grid_ids: list[int], limit: int = 8) -> list[tuple[int, str]]:
    """In-service AEDs nearest to the grids a grid worker serves (to pick the faulty one)."""
    grids = session.exec(select(GridUnit).where(col(GridUnit.id).in_(grid_ids))).all()
    if not grids:
        return []
    lat = sum(g.lat for g in grids) / len(grids)
    lng = sum(g.lng for g in grids) / len(grids)
    box = 0.03  # ~3 km around the grids
    rows = session.exec(
        select(AED).where(
            AED.status == AEDStatus.in_service,
            col(AED.lat).between(lat - box, lat + box),
            col(AED.lng).between(lng - box, lng + box),
        )
    ).all()
    rows = sorted(rows, key=lambda a: haversine_m(lat, lng, a.lat, a.lng))[:limit]
    return [(a.id or 0, a.name) for a in rows]


def _report_faulty_aed(turn: Turn, d: Dialog, aed_id: int) -> str:
    """A faulty AED leaves every answer at once; its town's coordinators are told."""
    aed = turn.session.get(AED, aed_id)
    assert aed is not None
    grid = places.grid_at(turn.session, lat=aed.lat, lng=aed.lng)
    grid_id: int = aed.grid_id or (grid.id if grid and grid.id else d.data["grids"][0][0])
    aed.status = AEDStatus.faulty
    turn.session.add(aed)
    report = Report(
        reporter_id=turn.pid, grid_id=grid_id, category=d.data["category"],
        text=f"{aed.name}：{d.data['text']}", lat=aed.lat, lng=aed.lng,
    )  # fmt: skip
    turn.session.add(report)
    turn.session.flush()
    turn.session.add(
        AuditEntry(actor_id=turn.person.id, action="aed.faulty", entity="aed", entity_id=aed.id,
                   detail={"report_id": report.id, "text": d.data["text"]})
    )
    from dispatcher.services import coordinators_for

    for coordinator in coordinators_for(turn.session, grid_id):
        row = queue_message(
            turn.session, person_id=coordinator.id or 0, purpose="aed_faulty", target=report.id or 0,
            text=copy.AED_FAULT_NOTICE.format(id=report.id, name=aed.name, text=d.data["text"]),
        )  # fmt: skip
        if row is not None and row.id is not None:
            turn.fx.deliveries.append(row.id)
    turn.finish()
    return copy.REP_AED_DONE.format(id=report.id, name=aed.name)


# --- broadcast (coordinators) ---------------------------------------------------------------


def coordinator_scope(session: Session, person: Person) -> GridUnit | None:
    if not person.is_coordinator or person.coordinator_scope_id is None:
        return None
    return session.get(GridUnit, person.coordinator_scope_id)


def bc_prompt(turn: Turn, d: Dialog) -> str:
    match d.step:
        case "scope":
            return copy.BC_ASK_SCOPE.format(all=d.data["scope_name"], example=d.data["example"])
        case "skills":
            return copy.BC_ASK_SKILLS.format(options=_skills_options())
        case "text":
            return copy.BC_ASK_TEXT
        case _:
            return copy.BC_CONFIRM_AGAIN


def bc_start(turn: Turn, scope: GridUnit) -> str:
    example = scope.name
    child = turn.session.exec(select(GridUnit).where(GridUnit.parent_id == scope.id).limit(1)).first()
    if child is not None:
        example = child.name
    all_label = "全市" if scope.level == Level.city else scope.name
    d = Dialog("broadcast", "scope", {"scope_id": scope.id, "scope_name": all_label, "example": example})
    turn.save(d)
    return bc_prompt(turn, d)


def bc_step(turn: Turn, d: Dialog) -> str:
    from dispatcher.audience import Audience, create_campaign, preview_audience

    text = turn.text
    scope = turn.session.get(GridUnit, d.data["scope_id"])
    assert scope is not None
    match d.step:
        case "scope":
            if text in ("全市", "全部", d.data["scope_name"]):
                target = scope
            else:
                found = [
                    u
                    for u in places.find_units(turn.session, text, levels=(Level.town, Level.village, Level.grid))
                    if places.in_subtree(u, scope)
                ]
                if len(found) != 1:
                    return copy.BC_BAD_SCOPE.format(text=text[:20], all=d.data["scope_name"])
                target = found[0]
            d.data["target_id"] = target.id
            d.data["target_name"] = "全市" if target.level == Level.city else target.name
            d.step = "skills"
        case "skills":
            if text in copy.ANY:
                d.data["skills"] = []
            else:
                picks = parse_choices(text, top=len(copy.SKILLS))
                if not picks:
                    return bc_prompt(turn, d)
                d.data["skills"] = [copy.SKILLS[i - 1][0] for i in picks]
            d.step = "text"
        case "text":
            raw = turn.inbound.text.strip()
            if not 5 <= len(raw) <= 500:
                return copy.BC_BAD_TEXT
            d.data["text"] = raw
            audience = Audience(grid_id=d.data["target_id"], skills=tuple(d.data["skills"]))
            pv = preview_audience(
                turn.session, audience=audience, now=turn.now, template_id=turn.settings.template_broadcast
            )
            if pv.total == 0:
                turn.save(d)
                return copy.BC_EMPTY
            d.step = "confirm"
            turn.save(d)
            head = copy.BC_PREVIEW.format(scope=d.data["target_name"], total=pv.total)
            if pv.deferred:
                head += copy.BC_PREVIEW_DEFERRED.format(deferred=pv.deferred)
            return head + "。\n" + copy.BC_PREVIEW_TAIL
        case "confirm":
            if text in ("取消", "放弃", "cancel"):
                turn.finish()
                return copy.BC_CANCELLED
            if text not in ("确认", "确定", "发送"):
                return copy.BC_CONFIRM_AGAIN
            audience = Audience(grid_id=d.data["target_id"], skills=tuple(d.data["skills"]))
            campaign = create_campaign(
                turn.session,
                turn.fx,
                coordinator_id=turn.pid,
                audience=audience,
                text=d.data["text"],
                now=turn.now,
            )
            turn.finish()
            return copy.BC_STARTED.format(id=campaign.id)
    turn.save(d)
    return bc_prompt(turn, d)


STEPS: dict[str, Step] = {"register": reg_step, "report": rep_step, "broadcast": bc_step}
PROMPTS: dict[str, Step] = {"register": reg_prompt, "report": rep_prompt, "broadcast": bc_prompt}
# steps that take a location message as their answer
LOCATION_STEPS = {("register", "place"), ("register", "place_pick"), ("report", "place")}
