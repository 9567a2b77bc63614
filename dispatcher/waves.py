"""Offer waves: how many to ask, how far to look, how long to wait. Pure.

Wave 1 asks ``open slots x fanout`` people within the urgency's base radius; each later wave
waits for the previous one's time-to-live and looks ``wave_widen_factor`` times farther, up
to ``max_radius_m`` and ``max_waves``. Emergencies follow community first-responder
practice: the 3-5 nearest, within 500 m in town (a 街道) and 1 km in the villages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from models.settings import DispatchPolicy


def ttl(urgency: str, policy: DispatchPolicy) -> timedelta:
    seconds = {
        "emergency": policy.ttl_emergency_s,
        "urgent": policy.ttl_urgent_s,
    }.get(urgency, policy.ttl_routine_s)
    return timedelta(seconds=seconds)


def wave_size(open_slots: int, urgency: str, policy: DispatchPolicy) -> int:
    if open_slots <= 0:
        return 0
    size = max(open_slots, math.ceil(open_slots * policy.fanout))
    if urgency == "emergency":
        size = min(max(size, policy.emergency_min_people), max(policy.emergency_max_people, open_slots))
    return size


def base_radius(urgency: str, policy: DispatchPolicy, *, urban: bool) -> float:
    if urgency == "emergency":
        return policy.radius_emergency_town_m if urban else policy.radius_emergency_village_m
    if urgency == "urgent":
        return policy.radius_urgent_m
    return policy.radius_routine_m


def radius(wave: int, urgency: str, policy: DispatchPolicy, *, urban: bool) -> float:
    """Search radius of wave ``wave`` (1-based): the base, widened once per later wave."""
    r = base_radius(urgency, policy, urban=urban) * policy.wave_widen_factor ** max(0, wave - 1)
    return min(r, policy.max_radius_m)


@dataclass(frozen=True)
class WavePlan:
    wave: int
    radius_m: float
    size: int


def plan(wave: int, open_slots: int, urgency: str, policy: DispatchPolicy, *, urban: bool) -> WavePlan | None:
    """The plan for wave ``wave``, or None when no wave that number may run."""
    if wave < 1 or wave > policy.max_waves or open_slots <= 0:
        return None
    return WavePlan(wave, radius(wave, urgency, policy, urban=urban), wave_size(open_slots, urgency, policy))


def can_widen(wave: int, urgency: str, policy: DispatchPolicy, *, urban: bool) -> bool:
    """Whether a wave after ``wave`` would look any farther (or is allowed at all)."""
    if wave >= policy.max_waves:
        return False
    return radius(wave + 1, urgency, policy, urban=urban) > radius(wave, urgency, policy, urban=urban)


def is_urban(town_name: str | None) -> bool:
    """A 街道 (street) is urban; 镇 and 乡 are villages for the emergency radius."""
    return bool(town_name) and str(town_name).endswith("街道")
