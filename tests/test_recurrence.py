"""Recurrences: phrases and cron → next fire times, errors, and daylight saving in Europe/Berlin.

Time is injected: every test computes fire times from a fixed ``after``; nothing sleeps.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.posts.schedules.recurrence import RecurrenceError, check_timezone, parse_recurrence

BERLIN = ZoneInfo("Europe/Berlin")
TZ = "Europe/Berlin"
# Wednesday 2026-06-10 12:00 CEST: far from any DST change.
AFTER = datetime(2026, 6, 10, 12, 0, tzinfo=BERLIN)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fires(text: str, after: datetime = AFTER, count: int = 3, tz: str = TZ) -> list[datetime]:
    return parse_recurrence(text, tz).next_fires(after, count)


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("every day at 09:00", "cron", [local(2026, 6, 11, 9), local(2026, 6, 12, 9), local(2026, 6, 13, 9)]),
        ("daily at 9:00", "cron", [local(2026, 6, 11, 9), local(2026, 6, 12, 9), local(2026, 6, 13, 9)]),
        ("Every  Day AT 9:30 pm", "cron", [local(2026, 6, 10, 21, 30), local(2026, 6, 11, 21, 30)]),
        ("every day at 9", "cron", [local(2026, 6, 11, 9)]),
        ("every day at 12am", "cron", [local(2026, 6, 11, 0)]),
        ("every day at 12pm", "cron", [local(2026, 6, 11, 12)]),  # 12:00 is not *after* 12:00
        (
            "every weekday at 09:00",
            "cron",
            [local(2026, 6, 11, 9), local(2026, 6, 12, 9), local(2026, 6, 15, 9)],
        ),
        (
            "every weekend at 10am",
            "cron",
            [local(2026, 6, 13, 10), local(2026, 6, 14, 10), local(2026, 6, 20, 10)],
        ),
        ("every monday at 10:30", "cron", [local(2026, 6, 15, 10, 30), local(2026, 6, 22, 10, 30)]),
        (
            "every mon, wed and fri at 18:00",
            "cron",
            [local(2026, 6, 10, 18), local(2026, 6, 12, 18), local(2026, 6, 15, 18)],
        ),
        ("every week on friday at 17:00", "cron", [local(2026, 6, 12, 17), local(2026, 6, 19, 17)]),
        ("every month on the 1st at 08:00", "cron", [local(2026, 7, 1, 8), local(2026, 8, 1, 8)]),
        ("every month on 15 at 8:15", "cron", [local(2026, 6, 15, 8, 15), local(2026, 7, 15, 8, 15)]),
        # Intervals without a time count from `after` (the schedule's creation).
        (
            "every 2 hours",
            "interval",
            [local(2026, 6, 10, 14), local(2026, 6, 10, 16), local(2026, 6, 10, 18)],
        ),
        ("every hour", "interval", [local(2026, 6, 10, 13), local(2026, 6, 10, 14)]),
        ("every 3 days", "interval", [local(2026, 6, 13, 12), local(2026, 6, 16, 12)]),
        # Anchored at the next 09:00 local (tomorrow: today's has passed), then every 3 days.
        (
            "every 3 days at 09:00",
            "interval",
            [local(2026, 6, 11, 9), local(2026, 6, 14, 9), local(2026, 6, 17, 9)],
        ),
        # Today's 18:00 is still ahead, so it is the anchor.
        ("every 2 days at 6pm", "interval", [local(2026, 6, 10, 18), local(2026, 6, 12, 18)]),
    ],
)
def test_phrases(text: str, kind: str, expected: list[datetime]) -> None:
    recurrence = parse_recurrence(text, TZ)
    assert recurrence.kind == kind
    assert recurrence.timezone == TZ
    assert recurrence.text == " ".join(text.split())
    got = recurrence.next_fires(AFTER, len(expected))
    assert got == expected
    assert all(fire.tzinfo is not None for fire in got)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # crontab numbering: 1-5 is Monday to Friday (APScheduler 3.x alone would read Tuesday-Saturday).
        ("0 9 * * 1-5", [local(2026, 6, 11, 9), local(2026, 6, 12, 9), local(2026, 6, 15, 9)]),
        ("0 9 * * 0", [local(2026, 6, 14, 9), local(2026, 6, 21, 9)]),
        ("0 9 * * 7", [local(2026, 6, 14, 9)]),
        ("30 8 * * */2", [local(2026, 6, 11, 8, 30), local(2026, 6, 13, 8, 30), local(2026, 6, 14, 8, 30)]),
        ("0 9 * * mon-fri", [local(2026, 6, 11, 9), local(2026, 6, 12, 9), local(2026, 6, 15, 9)]),
        ("*/15 * * * *", [local(2026, 6, 10, 12, 15), local(2026, 6, 10, 12, 30)]),
        ("0 8 1 1 *", [local(2027, 1, 1, 8)]),
    ],
)
def test_cron(expr: str, expected: list[datetime]) -> None:
    recurrence = parse_recurrence(f"  {expr} ", TZ)
    assert recurrence.kind == "cron"
    assert recurrence.text == expr
    assert recurrence.next_fires(AFTER, len(expected)) == expected


def test_other_time_zone() -> None:
    after = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    # 12:00 UTC is 08:00 EDT: 09:00 New York time is still ahead today.
    assert fires("every day at 09:00", after, 1, "America/New_York") == [utc(2026, 6, 10, 13)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 9 * *", "Invalid cron expression '0 9 * *': expected 5 fields, got 4"),
        ("0 25 * * *", "Invalid cron expression '0 25 * * *'"),
        ("0 9 * * 8", "Invalid cron expression '0 9 * * 8': bad weekday '8'"),
        ("61 9 * * *", "Invalid cron expression '61 9 * * *'"),
        (
            "every blue moon",
            "Could not understand the schedule 'every blue moon'. Try 'every weekday at 09:00'",
        ),
        ("at 9", "Could not understand the schedule 'at 9'"),
        ("", "The schedule is empty"),
        ("every day at 25:00", "Invalid time '25:00'. Use a time of day such as 09:00"),
        ("every day at 9:60", "Invalid time '9:60'"),
        ("every day at 13pm", "Invalid time '13pm'"),
        ("every funday at 9", "Unknown day 'funday' in 'every funday at 9'"),
        ("every day", "'every day' needs a time of day, e.g. 'every day at 09:00'"),
        ("every 0 hours", "must be at least 1"),
        ("every 2 hours at 09:00", "hourly schedules take no time of day"),
        ("every month on the 32nd at 08:00", "There is no day 32 in a month"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(RecurrenceError) as caught:
        parse_recurrence(text, TZ)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["Mars/Base", "", "Europe", "../etc/passwd"])
def test_unknown_time_zone(name: str) -> None:
    message = f"Unknown time zone {name!r}. Use an IANA name such as Europe/Berlin."
    with pytest.raises(RecurrenceError) as caught:
        check_timezone(name)
    assert str(caught.value) == message
    with pytest.raises(RecurrenceError) as caught:
        parse_recurrence("every day at 09:00", name)
    assert str(caught.value) == message


def test_known_time_zone() -> None:
    assert check_timezone("Europe/Berlin") == "Europe/Berlin"
    assert check_timezone("UTC") == "UTC"


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_recurrence("every hour", TZ).next_fires(datetime(2026, 6, 10, 12), 1)


def test_trigger_without_start_uses_now() -> None:
    trigger = parse_recurrence("every 2 hours", TZ).trigger()
    now = datetime.now(BERLIN)
    first = trigger.get_next_fire_time(None, now)
    assert first is not None
    assert timedelta(0) <= first - now <= timedelta(hours=2)


# Daylight saving in Europe/Berlin, 2026: clocks jump 02:00 CET → 03:00 CEST on Sunday
# 2026-03-29 and fall back 03:00 CEST → 02:00 CET on Sunday 2026-10-25.


def test_daily_keeps_local_time_across_spring_forward() -> None:
    got = fires("every day at 09:00", local(2026, 3, 27, 12), 4)
    assert got == [local(2026, 3, 28, 9), local(2026, 3, 29, 9), local(2026, 3, 30, 9), local(2026, 3, 31, 9)]
    assert [f.astimezone(UTC) for f in got] == [
        utc(2026, 3, 28, 8),  # CET, UTC+1
        utc(2026, 3, 29, 7),  # CEST, UTC+2, the very day of the change
        utc(2026, 3, 30, 7),
        utc(2026, 3, 31, 7),
    ]


def test_daily_keeps_local_time_across_fall_back() -> None:
    got = fires("every day at 09:00", local(2026, 10, 23, 12), 4)
    assert [f.astimezone(UTC) for f in got] == [
        utc(2026, 10, 24, 7),  # CEST
        utc(2026, 10, 25, 8),  # CET from the day of the change
        utc(2026, 10, 26, 8),
        utc(2026, 10, 27, 8),
    ]
    assert all((f.hour, f.minute) == (9, 0) for f in got)


def test_nonexistent_local_time_fires_once_an_hour_late() -> None:
    """02:30 does not exist in Berlin on 2026-03-29 (02:00 CET jumps to 03:00 CEST).

    APScheduler 3.11's CronTrigger builds the wall time 02:30 with fold=0, which zoneinfo
    reads with the offset in force *before* the gap (+01:00): the instant 01:30 UTC,
    i.e. 03:30 CEST. So the schedule fires exactly once that day, one hour later on the
    local clock than usual; it is not skipped. (Raw APScheduler labels that instant
    ``02:30+01:00``; the recurrence's trigger normalises it to the real local ``03:30+02:00``.)
    """
    got = fires("every day at 02:30", local(2026, 3, 27, 12), 4)
    assert [f.astimezone(UTC) for f in got] == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # the nonexistent 02:30: fires at 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]
    assert got[1].isoformat() == "2026-03-29T03:30:00+02:00"
    on_the_day = [f for f in got if f.date() == local(2026, 3, 29).date()]
    assert len(on_the_day) == 1
    # Also from just before and at the start of the day.
    assert fires("every day at 02:30", local(2026, 3, 29, 0), 1) == [utc(2026, 3, 29, 1, 30)]
    assert fires("0 * * * *", local(2026, 3, 29, 0, 30), 3) == [
        local(2026, 3, 29, 1),
        local(2026, 3, 29, 3),  # 02:00 does not exist; the next real hour follows
        local(2026, 3, 29, 4),
    ]


def test_repeated_local_time_fires_once() -> None:
    """02:30 happens twice in Berlin on 2026-10-25 (CEST, then CET an hour later).

    Plain APScheduler 3.11 would fire on both; the recurrence's trigger skips the repeat
    (fold=1), so it fires once, at the first occurrence, 00:30 UTC.
    """
    got = fires("every day at 02:30", local(2026, 10, 23, 12), 4)
    assert [f.astimezone(UTC) for f in got] == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first 02:30
        utc(2026, 10, 26, 1, 30),  # CET from now on
        utc(2026, 10, 27, 1, 30),
    ]
    # Asked between the two 02:30s (02:40 CEST), the repeat is not a new fire either.
    between = datetime(2026, 10, 25, 2, 40, tzinfo=BERLIN)
    assert fires("every day at 02:30", between, 1) == [utc(2026, 10, 26, 1, 30)]
    # A cron with a wildcard hour keeps firing every real hour through the repeat.
    hourly = fires("0 * * * *", local(2026, 10, 25, 1, 30), 4)
    assert [f.astimezone(UTC) for f in hourly] == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]


@pytest.mark.parametrize(
    ("after", "local_times"),
    [
        # Spring forward: 01:00 CET + 2 h is 04:00 CEST.
        (local(2026, 3, 28, 23), ["01:00+01:00", "04:00+02:00", "06:00+02:00", "08:00+02:00"]),
        # Fall back: 01:00 CEST + 2 h is the second 02:00 (CET), then 04:00 CET.
        (local(2026, 10, 24, 23), ["01:00+02:00", "02:00+01:00", "04:00+01:00", "06:00+01:00"]),
    ],
)
def test_every_two_hours_keeps_real_interval(after: datetime, local_times: list[str]) -> None:
    got = fires("every 2 hours", after, 4)
    # Subtract in UTC: aware datetimes sharing a tzinfo subtract by wall clock.
    instants = [f.astimezone(UTC) for f in [after, *got]]
    assert [b - a for a, b in itertools.pairwise(instants)] == [timedelta(hours=2)] * 4
    assert [f.isoformat(timespec="minutes")[11:] for f in got] == local_times


def test_every_n_days_at_keeps_local_time_across_dst() -> None:
    got = fires("every 3 days at 09:00", local(2026, 3, 25, 12), 3)
    assert got == [local(2026, 3, 26, 9), local(2026, 3, 29, 9), local(2026, 4, 1, 9)]
    assert got[1].astimezone(UTC) == utc(2026, 3, 29, 7)
