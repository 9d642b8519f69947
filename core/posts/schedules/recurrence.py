"""Recurrences for scheduled auto-drafts: what users write, turned into APScheduler triggers.

Accepted (case-insensitive, extra whitespace ignored):

* a standard 5-field cron expression, ``0 9 * * 1-5`` (minute hour day month weekday).
  The weekday field uses crontab numbering (0 or 7 = Sunday); APScheduler 3.x counts
  0 = Monday, so numeric weekdays are rewritten to names before ``CronTrigger.from_crontab``.
* phrases: ``every day at 09:00``, ``daily at 9:00``, ``every weekday at 09:00``,
  ``every weekend at 10am``, ``every monday at 10:30``, ``every mon, wed and fri at 18:00``,
  ``every week on friday at 17:00``, ``every month on the 1st at 08:00`` (cron kind) and
  ``every 3 days``, ``every 3 days at 09:00``, ``every 2 hours``, ``every hour`` (interval kind).

Times: ``9``, ``09:00``, ``9:30``, ``9am``, ``9:30 pm`` — always wall-clock time in the
recurrence's IANA time zone.

Intervals and their anchor (``Recurrence.trigger(start=...)``; ``start`` defaults to now):

* ``every N hours`` / ``every N days`` (no time): a real interval (N·3600 s, N·86400 s)
  counted from ``start``; the first fire is ``start`` itself, then every interval after.
  Across a DST change the real interval is kept, so the local clock time shifts by an hour.
* ``every N days at HH:MM``: anchored at the next HH:MM local time at or after ``start``
  (today's HH:MM in the time zone if it is still ahead, else tomorrow's), then every N
  calendar days at HH:MM local time (APScheduler's ``CalendarIntervalTrigger``), so the
  local clock time stays put across DST. A day on which HH:MM does not exist (spring
  forward) is skipped; on a day where it happens twice (fall back) the earlier one is used.

Daylight saving, for the cron kind: a wall-clock time that does not exist (Europe/Berlin
2026-03-29 02:30) fires once, at the instant that wall time would have had before the change
(01:30 UTC, shown as 03:30+02:00). A wall-clock time that happens twice (2026-10-25 02:30)
fires once, at the first occurrence: plain APScheduler 3.11 fires on both, so ``trigger``
returns a ``CronTrigger`` subclass that skips the repeat (as Vixie cron does), unless the
hour field is ``*`` (``0 * * * *`` keeps firing every real hour).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped, unused-ignore]
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger  # type: ignore[import-untyped, unused-ignore]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped, unused-ignore]
from apscheduler.triggers.date import DateTrigger  # type: ignore[import-untyped, unused-ignore]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped, unused-ignore]

__all__ = ["Recurrence", "RecurrenceError", "check_timezone", "parse_recurrence"]

EXAMPLES = (
    "'every weekday at 09:00', 'every mon, wed and fri at 18:00', 'every 2 hours', "
    "'every month on the 1st at 08:00' or a cron expression like '0 9 * * 1-5'"
)


class RecurrenceError(ValueError):
    """A schedule the user wrote that cannot be understood; the message is meant for them."""


# Weekday names and abbreviations → APScheduler day names (as used in cron fields).
_DAYS: dict[str, str] = {}
for _full, _short, _extra in (
    ("monday", "mon", ()),
    ("tuesday", "tue", ("tues",)),
    ("wednesday", "wed", ()),
    ("thursday", "thu", ("thur", "thurs")),
    ("friday", "fri", ()),
    ("saturday", "sat", ()),
    ("sunday", "sun", ()),
):
    for _name in (_full, _short, *_extra):
        _DAYS[_name] = _short
        _DAYS[_name + "s"] = _short  # "mondays"
_DAY_GROUPS = {
    "day": "*",
    "weekday": "mon-fri",
    "weekdays": "mon-fri",
    "weekend": "sat,sun",
    "weekends": "sat,sun",
}
_WEEK_ORDER = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab 0..6 (7 = sun)

_TIME = r"(?P<time>\d{1,2}(?::\d{2})?\s*(?:am|pm)?)"
_EVERY_N = re.compile(rf"every (?:(?P<n>\d+) )?(?P<unit>hours?|days?)(?: at {_TIME})?")
_WEEKLY = re.compile(rf"every week on (?P<days>.+?) at {_TIME}")
_MONTHLY = re.compile(rf"every month on (?:the )?(?P<dom>\d{{1,2}})(?:st|nd|rd|th)? at {_TIME}")
_DAY_LIST = re.compile(rf"(?:every (?P<days>.+?)|daily) at {_TIME}")
_TIME_PARTS = re.compile(r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>am|pm)?")
_DOW_ITEM = re.compile(r"(?P<a>\*|\d+)(?:-(?P<b>\d+))?(?:/(?P<step>\d+))?")


def check_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA time zone, else raise RecurrenceError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise RecurrenceError(
            f"Unknown time zone {name!r}. Use an IANA name such as Europe/Berlin."
        ) from None
    return name


class _CronTrigger(CronTrigger):  # type: ignore[misc]
    """``CronTrigger`` that fires once on a wall-clock time repeated by a DST fall-back.

    Fire times are also normalised: APScheduler 3.11 can return a wall time that does not
    exist (02:30+01:00 on a spring-forward day); the same instant is returned as a real
    local time (03:30+02:00).
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None:
            fire = datetime.fromtimestamp(fire.timestamp(), self.timezone)
            if not (
                fire.fold == 1
                and _is_repeated(fire)
                and str(self.fields[self.FIELD_NAMES.index("hour")]) != "*"
            ):
                return fire
            # The first occurrence of this wall time matched the same fields: skip the repeat.
            fire = super().get_next_fire_time(fire, fire)
        return None


def _is_repeated(moment: datetime) -> bool:
    return moment.replace(fold=0).utcoffset() != moment.replace(fold=1).utcoffset()


@dataclass(frozen=True, slots=True)
class Recurrence:
    text: str
    timezone: str
    kind: Literal["cron", "interval", "once"]
    cron: str = ""  # cron kind: an APScheduler crontab, weekdays as names ("0 9 * * mon-fri")
    every_days: int = 0  # interval kind: N days, or
    every_hours: int = 0  # ... N hours
    at: time | None = None  # interval kind, days only: local wall-clock time
    when: datetime | None = None  # once kind: the local date and time

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def trigger(self, *, start: datetime | None = None) -> BaseTrigger:
        """The APScheduler trigger; ``start`` anchors intervals (default: now)."""
        zone = self.zone
        if self.kind == "cron":
            return _CronTrigger.from_crontab(self.cron, timezone=zone)
        if self.kind == "once" and self.when is not None:
            return DateTrigger(run_date=self.when, timezone=zone)
        start = datetime.now(zone) if start is None else start
        if self.at is None:
            return IntervalTrigger(
                days=self.every_days, hours=self.every_hours, start_date=start, timezone=zone
            )
        local = start.astimezone(zone)
        first: date = local.date()
        if datetime.combine(first, self.at, tzinfo=zone) < start:
            first += timedelta(days=1)
        return CalendarIntervalTrigger(
            days=self.every_days,
            hour=self.at.hour,
            minute=self.at.minute,
            start_date=first,
            timezone=zone,
        )

    def next_fires(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times strictly after ``after`` (aware), for a schedule
        created (intervals anchored) at ``after``. Pure: no clock is read."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("after must be a timezone-aware datetime")
        trigger: Any = self.trigger(start=after)
        fires: list[datetime] = []
        previous: datetime | None = None
        now = after
        while len(fires) < count:
            fire: datetime | None = trigger.get_next_fire_time(previous, now)
            # Compare instants: aware datetimes sharing a tzinfo compare by wall clock, fold ignored.
            if fire is None or (previous is not None and fire.timestamp() <= previous.timestamp()):
                break
            if fire.timestamp() > after.timestamp():
                fires.append(fire)
            previous = now = fire
        return fires


_ONCE = re.compile(r"once at (?P<date>\d{4}-\d{2}-\d{2})[ t](?P<time>\d{1,2}:\d{2})")
#: the longest interval: beyond it, dates leave what a calendar (and APScheduler) can count
MAX_INTERVAL_DAYS = 3650


def parse_recurrence(text: str, timezone: str) -> Recurrence:
    """Parse what a user wrote into a Recurrence; RecurrenceError says what was wrong."""
    check_timezone(timezone)
    text = " ".join(text.split())
    if not text:
        raise RecurrenceError(f"The schedule is empty. Try {EXAMPLES}.")
    if once := _ONCE.fullmatch(text.lower()):
        try:
            moment = datetime.fromisoformat(f"{once['date']}T{once['time'].zfill(5)}")
        except ValueError:
            raise RecurrenceError(
                f"{text!r} is not a real date and time, e.g. 'once at 2026-12-01 09:00'."
            ) from None
        return Recurrence(text, timezone, "once", when=moment.replace(tzinfo=ZoneInfo(timezone)))
    if text[0].isdigit() or text[0] == "*":
        return _parse_cron(text, timezone)
    phrase = text.lower()

    if m := _EVERY_N.fullmatch(phrase):
        n = int(m["n"]) if m["n"] else 1
        at = _parse_time(m["time"]) if m["time"] else None
        if n < 1:
            raise RecurrenceError(f"The interval in {text!r} must be at least 1, e.g. 'every 2 hours'.")
        hourly = m["unit"].startswith("hour")
        if n > (MAX_INTERVAL_DAYS * 24 if hourly else MAX_INTERVAL_DAYS):
            longest = f"every {MAX_INTERVAL_DAYS * 24} hours" if hourly else f"every {MAX_INTERVAL_DAYS} days"
            raise RecurrenceError(f"The interval in {text!r} is too long: at most {longest}.")
        if hourly:
            if at is not None:
                raise RecurrenceError(f"{text!r}: hourly schedules take no time of day. Try 'every 2 hours'.")
            return Recurrence(text, timezone, "interval", every_hours=n)
        if n == 1 and m["n"] is None:
            if at is None:
                raise RecurrenceError(f"{text!r} needs a time of day, e.g. 'every day at 09:00'.")
            return Recurrence(text, timezone, "cron", cron=f"{at.minute} {at.hour} * * *")
        return Recurrence(text, timezone, "interval", every_days=n, at=at)

    if m := _MONTHLY.fullmatch(phrase):
        dom = int(m["dom"])
        if not 1 <= dom <= 31:
            raise RecurrenceError(f"There is no day {dom} in a month. Try 'every month on the 1st at 08:00'.")
        at = _parse_time(m["time"])
        return Recurrence(text, timezone, "cron", cron=f"{at.minute} {at.hour} {dom} * *")

    if m := _WEEKLY.fullmatch(phrase) or _DAY_LIST.fullmatch(phrase):
        days = _parse_days(m["days"] or "day", text)
        at = _parse_time(m["time"])
        return Recurrence(text, timezone, "cron", cron=f"{at.minute} {at.hour} * * {days}")

    raise RecurrenceError(f"Could not understand the schedule {text!r}. Try {EXAMPLES}.")


def _parse_time(raw: str) -> time:
    m = _TIME_PARTS.fullmatch(raw)
    hour, minute = (int(m["h"]), int(m["m"] or 0)) if m else (-1, -1)
    if m and m["ampm"]:
        hour = hour % 12 + (12 if m["ampm"] == "pm" else 0) if 1 <= hour <= 12 else -1
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise RecurrenceError(f"Invalid time {raw!r}. Use a time of day such as 09:00, 9:30, 9am or 9:30 pm.")
    return time(hour, minute)


def _parse_days(raw: str, text: str) -> str:
    if raw in _DAY_GROUPS:
        return _DAY_GROUPS[raw]
    names = [name for name in re.split(r"\s*(?:,|&|\band\b)\s*", raw) if name]
    unknown = [name for name in names if name not in _DAYS]
    if not names or unknown:
        bad = unknown[0] if unknown else raw
        raise RecurrenceError(
            f"Unknown day {bad!r} in {text!r}. Use day names such as 'every mon, wed and fri at 18:00'."
        )
    chosen = {_DAYS[name] for name in names}
    return ",".join(day for day in _WEEK_ORDER if day in chosen)


def _parse_cron(text: str, timezone: str) -> Recurrence:
    def bad(why: str) -> RecurrenceError:
        return RecurrenceError(
            f"Invalid cron expression {text!r}: {why}. "
            "Use 5 fields (minute hour day month weekday), e.g. '0 9 * * 1-5'."
        )

    fields = text.split()
    if len(fields) != 5:
        raise bad(f"expected 5 fields, got {len(fields)}")
    fields[4] = _crontab_weekdays(fields[4], bad)
    cron = " ".join(fields)
    try:
        CronTrigger.from_crontab(cron, timezone=ZoneInfo(timezone))
    except ValueError as exc:
        raise bad(str(exc)) from None
    return Recurrence(text, timezone, "cron", cron=cron)


def _crontab_weekdays(field: str, bad: Callable[[str], RecurrenceError]) -> str:
    """Rewrite a crontab weekday field (0/7 = Sunday) with names, which APScheduler reads
    the same way (its numbers start at Monday)."""
    if field == "*" or re.search(r"[a-z]", field, re.IGNORECASE):
        return field
    chosen: set[str] = set()
    for item in field.split(","):
        m = _DOW_ITEM.fullmatch(item)
        if not m:
            raise bad(f"bad weekday {item!r}")
        first, last = (0, 6) if m["a"] == "*" else (int(m["a"]), int(m["a"]))
        if m["b"] is not None:
            if m["a"] == "*":
                raise bad(f"bad weekday {item!r}")
            last = int(m["b"])
        elif m["step"] is not None and m["a"] != "*":
            last = 6  # "1/2": from Monday to the end of the week
        step = int(m["step"] or 1)
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step >= 1):
            raise bad(f"bad weekday {item!r} (use 0-7, 0 and 7 are Sunday)")
        chosen.update(_CRONTAB_DAYS[day % 7] for day in range(first, last + 1, step))
    return ",".join(day for day in _WEEK_ORDER if day in chosen)
