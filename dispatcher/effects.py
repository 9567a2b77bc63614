"""What a service call leaves for the background to do once its transaction commits.

Services stay free of Redis: they record effects here, the caller commits, then hands the
Effects to ``jobs.effects.apply``. If the process dies between commit and apply, the
reconciler finds the same work from the database (pending deliveries, accepted assignments
without reminders, open offers past expiry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Effects:
    deliveries: list[int] = field(default_factory=list)  # Delivery ids to send
    assignments: list[int] = field(default_factory=list)  # assignments whose reminders to (re)sync
    waves: list[tuple[int, int, datetime]] = field(default_factory=list)  # (task_id, wave, run_at)
    campaigns: list[int] = field(default_factory=list)  # campaigns to start fanning out
    # emergency work (an SOS): apply puts it on the high queue, whatever the caller asked
    urgent: bool = False

    def merge(self, other: Effects) -> Effects:
        self.deliveries += other.deliveries
        self.assignments += other.assignments
        self.waves += other.waves
        self.campaigns += other.campaigns
        self.urgent = self.urgent or other.urgent
        return self

    def __bool__(self) -> bool:
        return bool(self.deliveries or self.assignments or self.waves or self.campaigns)
