"""Times and dates on the staff page in one style (kiosk.staff.timefmt): 24-hour times typed and read strictly on
the Volume page (as on the Schedule page), and every date and time on the Status page — its cards, events, charts
(their axes, drawn on a canvas, included) and tables — as "Fri 4 Dec", "16:45", "16:45:03", in the speaker's time
zone even when the phone's is another. In headless Chromium at phone and desktop sizes, with axe-core.

A screenshot of the Status page after a line that could not be played lands in artifacts/screenshots/; with
KIOSK_REFRESH_SCREENSHOTS=1 it also refreshes docs/screenshots/status-failed-line.png.
"""

import os
import re
import shutil
import time
from datetime import date, datetime

import pytest
from test_staff import PASSWORD, csrf_of, log_in, operator, post, settings_of, staff  # noqa: F401 (fixtures)
from test_staff_ux import (  # noqa: F401 (start_service is a fixture)
    AXE,
    DESKTOP,
    DOCS,
    PHONE,
    SHOTS,
    STEP_MS,
    base,
    check_page,
    press,
    start_service,
    until,
)
from test_staff_ux import log_in as browser_log_in
from test_staff_ux import new_page as ux_new_page

from kiosk.history import Outcome
from kiosk.staff.auth import PasswordFile
from kiosk.staff.timefmt import clock, local_seconds, short_day, short_moment

playwright_api = pytest.importorskip("playwright.async_api")

SPEAKER_TZ = "Asia/Kolkata"  # +05:30: a half-hour offset, so a time shown in any other zone cannot look right
PHONE_TZ = "Pacific/Auckland"  # the phone's own zone: never the one the page shows
TWENTY_FIVE = "25:00 is not a time of day (00:00 to 23:59)"
QUARTER_TO_FIVE = "'quarter to five' is not a time of day: type hours and minutes, 24-hour, like 16:45"

# What must never be shown: the browser's locale dates and times, 12-hour clocks, ISO timestamps.
FORBIDDEN = {
    "numeric date": re.compile(r"\b\d{1,2}/\d{1,2}(/\d{2,4})?\b"),
    "am/pm": re.compile(r"\b\d{1,2}(:\d{2})?\s?(am|pm|AM|PM)\b"),
    "ISO timestamp": re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:"),
    "ISO date": re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),
}
CLOCK = re.compile(r"(?<![\d.:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])")
DAY = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)( \d{4})?"
# Everything a chart draws on its canvas: counts, milliseconds, 24-hour times, days.
CANVAS_TEXT = re.compile(rf"|\d+|\d+ ms|([01]\d|2[0-3]):[0-5]\d|{DAY}")

# Every piece of text drawn on a canvas (the charts' axes), recorded before the page's own scripts run.
RECORD_CANVAS = """
window.__canvasText = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.__canvasText.push(String(text));
  return fillText.call(this, text, ...rest);
};
"""
TEXT_NODES = """() => {
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.replace(/\\s+/g, " ").trim();
    if (text && !walker.currentNode.parentElement.closest("script, style")) found.push(text);
  }
  return found;
}"""


@pytest.fixture
def speaker_tz():
    """The speaker (this process) in SPEAKER_TZ for the test, whatever this machine's zone is."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = SPEAKER_TZ
    time.tzset()
    yield SPEAKER_TZ
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


# -- the rules, without a browser


def test_dates_and_times_on_the_status_page_have_one_style():
    today = date(2026, 12, 4)
    assert short_day(date(2026, 12, 4), today) == "Fri 4 Dec"
    assert short_day(date(2025, 12, 31), today) == "Wed 31 Dec 2025"
    when = datetime(2026, 11, 5, 4, 5, 3)
    assert clock(when) == "04:05" and clock(when, seconds=True) == "04:05:03"
    assert short_moment(when, today, seconds=True) == "Thu 5 Nov, 04:05:03"
    assert short_moment(datetime(2026, 12, 4, 0, 0), today) == "Fri 4 Dec, 00:00"


def test_local_seconds_read_as_utc_give_the_speakers_wall_clock(speaker_tz):
    at = datetime(2026, 12, 4, 16, 45, 3).timestamp()  # 16:45:03 in Kolkata
    assert datetime.utcfromtimestamp(local_seconds(at)) == datetime(2026, 12, 4, 16, 45, 3)
    assert local_seconds(at) - at == 5.5 * 3600


# -- the Volume page over HTTP


@pytest.mark.parametrize(("typed", "message"), [("25:00", TWENTY_FIVE), ("quarter to five", QUARTER_TO_FIVE)])
async def test_quiet_hours_refuse_what_is_not_a_time_and_save_nothing(staff, typed, message):  # noqa: F811
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/volume")
    bad = {"csrf": token, "volume": "60", "quiet.0.start": typed, "quiet.0.end": "07:00", "quiet.0.volume": "0"}
    status, html, _ = await post(http, "/volume", bad)
    assert status == 400 and message.replace("'", "&#39;") in html
    assert f'value="{typed}"' in html  # what was typed stays in its field
    assert settings_of(service) is None and service.cfg.quiet_hours == ()


async def test_quiet_hours_typed_24_hour_are_saved_as_before(staff):  # noqa: F811
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/volume")
    form = {"csrf": token, "volume": "60", "quiet.0.start": "22.00", "quiet.0.end": "0700", "quiet.0.volume": "10"}
    assert (await post(http, "/volume", form))[0] == 303
    assert settings_of(service)["quiet_hours"] == [{"start": "22:00", "end": "07:00", "volume": 10}]
    assert service.cfg.quiet_volume(datetime(2026, 12, 1, 23, 0)) == 10
    status, html, _ = await post(http, "/volume", {**form, "quiet.0.start": "7:00", "quiet.0.end": "07:00"})
    assert status == 400 and "the same as the start (07:00)" in html  # the config's own rule, after reading
    assert 'value="7:00"' in html


# -- in Chromium


async def new_page(browser, size, timezone_id=None):
    """A page as test_staff_ux's, in the phone's own time zone when one is given, recording canvas text."""
    options = {"timezone_id": timezone_id} if timezone_id else {}
    return await ux_new_page(browser, size, init_script=RECORD_CANVAS, locale="en-US", **options)


async def test_volume_page_reads_24_hour_times_at_both_sizes(start_service, browser):  # noqa: F811
    svc = await start_service()
    axe = AXE.read_text()
    for size_name, size, start, end, saved in (
        ("phone", PHONE, "22:00", "0700", ("22:00", "07:00")),
        ("desktop", DESKTOP, "12.30", "1400", ("12:30", "14:00")),
    ):
        page = await new_page(browser, size)
        await browser_log_in(page, svc, "/volume")
        add = page.locator("fieldset", has_text="Add a quiet period")
        boxes = add.locator("input.time-of-day")
        assert await boxes.count() == 2
        for box in await boxes.all():
            assert await box.get_attribute("type") == "text"  # no locale picker showing "04:45 PM"
        assert "24-hour" in await page.inner_text("#quiet-time-hint")
        await check_page(page, axe, "volume-times", size_name)
        before = svc.cfg.quiet_hours

        for typed, message in (("25:00", TWENTY_FIVE), ("quarter to five", QUARTER_TO_FIVE)):
            add = page.locator("fieldset", has_text="Add a quiet period")
            await add.locator("input.time-of-day").nth(0).fill(typed)
            await add.locator("input.time-of-day").nth(1).fill(end)
            await page.click("text=Save volume")
            await page.locator(".error", has_text=message).wait_for()
            add = page.locator("fieldset", has_text="Add a quiet period")
            # The refused row is shown as a period (no longer the empty row to add one), with what was typed.
            row = page.locator("fieldset.quiet-period", has=page.locator(".error", has_text=message))
            assert await row.locator("input.time-of-day").nth(0).input_value() == typed
            assert await row.locator("input.time-of-day").nth(1).input_value() == end
            assert svc.cfg.quiet_hours == before, "nothing is saved while a time is refused"
            await check_page(page, axe, "volume-time-refused", size_name)
            await page.goto(f"{base(svc)}/volume")

        add = page.locator("fieldset", has_text="Add a quiet period")
        await add.locator("input.time-of-day").nth(0).fill(start)
        await add.locator("input.time-of-day").nth(1).fill(end)
        await page.click("text=Save volume")
        await page.locator('.form-msg[data-kind="done"]').wait_for()
        assert (svc.cfg.quiet_hours[-1].start, svc.cfg.quiet_hours[-1].end) == saved
        shown = await page.locator("input.time-of-day").evaluate_all("els => els.map((e) => e.value)")
        assert shown[-4:-2] == list(saved) and all(re.fullmatch(r"\d\d:\d\d", t) for t in shown if t)
        await check_page(page, axe, "volume-times-saved", size_name)
        assert not page.test_errors, page.test_errors
        await page.context.close()


def check_text(texts: list[str], where: str) -> list[str]:
    """Every date and time in `texts` in the one style; the times found, for the caller to look at."""
    times = []
    for text in texts:
        for name, pattern in FORBIDDEN.items():
            assert not pattern.search(text), f"{name} on {where}: {text!r}"
        for match in CLOCK.finditer(text):
            hours, minutes, seconds = match.groups()
            assert len(hours) == 2 and int(hours) < 24 and int(minutes) < 60, f"not 24-hour on {where}: {text!r}"
            assert seconds is None or int(seconds) < 60
            times.append(match.group(0))
    return times


async def test_status_page_shows_the_speakers_times_in_one_style(start_service, browser, server, speaker_tz):  # noqa: F811
    svc = await start_service()
    await until(lambda: not svc.warm["running"])
    now = time.time()
    today = date.today()
    three_days_ago = datetime.fromtimestamp(now - 3 * 86400).replace(hour=4, minute=5).timestamp()  # not "4am"
    svc.history.record(Outcome(three_days_ago, "button:17", "welcome", "cache", 3.0, "done"))
    svc.history.record(Outcome(now - 600, "presence", None, None, None, "approach"))
    last_year = datetime(today.year - 1, 12, 4, 3, 3, 48).timestamp()  # once shown as "2026-12-04 03:03:48"
    svc.event_log.load([{"time": last_year, "text": "An event from last year", "count": 1}])
    svc.event_log.add("A staff note")
    for pin in (17, 23, 17):
        await press(svc, pin)
    await svc.history.flush()
    day_labels = {short_day(date.fromordinal(today.toordinal() - n), today) for n in range(30)}
    axe = AXE.read_text()

    for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await new_page(browser, size, timezone_id=PHONE_TZ)
        await browser_log_in(page, svc, "/status")
        assert await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == PHONE_TZ
        await page.locator('[data-history][data-drawn="4"]').wait_for(state="attached")
        await check_status_page(page, svc, day_labels, last_year, size_name)
        await check_page(page, axe, "status-times", size_name)
        assert not page.test_errors, page.test_errors
        if size_name == "phone":
            await fail_a_line(page, svc, server)
            await check_status_page(page, svc, day_labels, last_year, "status after a failed line")
            await check_page(page, axe, "status-failed-line", size_name)
        await page.context.close()


async def check_status_page(page, svc, day_labels, last_year, where):
    times = check_text(await page.evaluate(TEXT_NODES), where)
    today = date.today()
    # The events: the speaker's date and time (its own zone, not the phone's), seconds shown, the year when not this.
    expected = [short_moment(datetime.fromtimestamp(e["time"]), today, seconds=True) for e in svc.event_log.events]
    shown = await page.locator('[data-field="events"] time').all_inner_texts()
    assert shown == expected[::-1][: len(shown)] and len(shown) == min(len(expected), 20)
    old = f"{short_day(datetime.fromtimestamp(last_year).date(), today)}, 03:03:48"
    assert old in shown and old.endswith(f" {today.year - 1}, 03:03:48")
    assert all(re.fullmatch(rf"{DAY}, \d\d:\d\d:\d\d", s) for s in shown)
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times)
    # The history's hours and days, as the speaker counted them.
    summary = await svc.app.history_summary(30)
    by_hour = summary["presses_by_hour"]
    busiest = by_hour.index(max(by_hour))
    assert f"Busiest hour: {busiest:02d}:00–{(busiest + 1) % 24:02d}:00." in await page.inner_text(
        "[data-chart-summary]"
    )
    table = await page.locator('[data-table="per_day"] tbody td').all_text_contents()
    assert any(re.fullmatch(rf"{DAY} \(\d+\)", cell) for cell in table), table
    # What the charts drew on their canvases.
    drawn = [t for t in await page.evaluate("window.__canvasText") if t.strip()]
    assert drawn, "the charts drew no labels"
    odd = [t for t in drawn if not CANVAS_TEXT.fullmatch(t)]
    assert not odd, f"chart labels not in the one style on {where}: {odd}"
    days = [t for t in drawn if re.fullmatch(DAY, t)]
    assert days and all(d in day_labels for d in days), days
    assert short_day(date.today(), date.today()) in days  # today's day has its label


async def fail_a_line(page, svc, server):
    """The voice service gone and no local voice: a new line played from the Lines page cannot be spoken. The Status
    page says so in the Last line card (and its events); the screenshot of it is kept."""
    await server.stop()
    await page.goto(f"{base(svc)}/lines")
    await page.fill("#new-id", "garnet")
    await page.fill("#new-text", "Garnets glow deep red.")
    await page.click("text=Add line")
    await page.locator("#line-garnet").wait_for()
    await page.locator("#line-garnet").get_by_role("button", name="Play on the speaker").click()
    await page.goto(f"{base(svc)}/status")
    await page.locator('[data-field="last_line"]', has_text="Not played:").wait_for(timeout=20_000)
    await page.locator('[data-field="events"] li', has_text="could not be spoken").wait_for(timeout=20_000)
    assert (await page.inner_text('[data-field="last_line"]')).startswith("Not played: ")
    await page.locator('[data-history][data-drawn="4"]').wait_for(state="attached")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "status-failed-line.png"), full_page=True)
    if os.environ.get("KIOSK_REFRESH_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / "status-failed-line.png", DOCS / "status-failed-line.png")
