"""The Schedule page: 24-hour times read strictly (refused with a message, never guessed at, what was typed kept),
announcements typed in place (a new line and the schedule in one save: both or neither), line menus that fit a
phone, over HTTP and in headless Chromium at phone and desktop sizes (with axe-core)."""

import asyncio
from datetime import date, datetime

import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory
from test_staff import PASSWORD, csrf_of, get, log_in, operator, post, settings_of, staff  # noqa: F401 (fixtures)

from kiosk.config import load_config, phrase_problem
from kiosk.errors import ConfigError
from kiosk.service import Service
from kiosk.staff import account
from kiosk.staff.auth import PasswordFile
from kiosk.staff.schedule import OPTION_CHARS, new_line_id, option_label
from kiosk.staff.timefmt import day, moment, parse_time_of_day
from kiosk.systemd import Notifier

CLOSING = "The museum closes in 15 minutes"


# -- the rules, without HTTP


@pytest.mark.parametrize(
    ("typed", "read"),
    [("22:00", "22:00"), ("9:30", "09:30"), ("09:30", "09:30"), ("0930", "09:30"), ("16.45", "16:45"),
     ("00:00", "00:00"), ("23:59", "23:59"), (" 7:05 ", "07:05")],
)  # fmt: skip
def test_times_of_day_that_are_taken(typed, read):
    assert parse_time_of_day(typed) == (read, None)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("25:00", "25:00 is not a time of day (00:00 to 23:59)"),
        ("24:00", "24:00 is not a time of day (00:00 to 23:59)"),
        ("9:60", "9:60 is not a time of day (00:00 to 23:59)"),
        ("2500", "2500 is not a time of day (00:00 to 23:59)"),
        ("quarter to five", "'quarter to five' is not a time of day: type hours and minutes, 24-hour, like 16:45"),
        ("04:45 PM", "'04:45 PM' is not a time of day: type hours and minutes, 24-hour, like 16:45"),
        ("4am", "'4am' is not a time of day"),
        ("NaN", "'NaN' is not a time of day"),
        ("inf", "'inf' is not a time of day"),
        ("1e3", "'1e3' is not a time of day"),
        ("-1:00", "'-1:00' is not a time of day"),
        ("9:5", "9:5 is not a time of day"),
        ("930", "930 is not a time of day"),
        ("16:45:00", "16:45:00 is not a time of day"),
        ("٠٩:٣٠", "'٠٩:٣٠' is not a time of day"),  # Arabic-Indic digits: not ASCII
        ("１６:４５", "'１６:４５' is not a time of day"),
        ("", "type a time of day (24-hour, like 16:45)"),
        ("9" * 5000, "9" * 20 + "… is not a time of day"),  # the message repeats the first 20 characters only
    ],
)
def test_times_of_day_that_are_refused(typed, message):
    read, problem = parse_time_of_day(typed)
    assert read is None and problem.startswith(message)
    assert len(problem) < 120


def test_dates_have_one_style():
    assert day(date(2026, 12, 4)) == "Fri 4 Dec 2026"
    assert moment(datetime(2026, 12, 4, 3, 3, 48)) == "Fri 4 Dec 2026, 03:03"


def test_ids_made_from_words_follow_the_line_rules():
    assert new_line_id(CLOSING, set()) == "the-museum-closes-in-15-minutes"
    assert new_line_id(CLOSING, {"the-museum-closes-in-15-minutes"}) == "the-museum-closes-in-15-minutes-2"
    assert new_line_id("Café — crème brûlée!", set()) == "cafe-creme-brulee"
    assert new_line_id("博物馆即将关闭", set()) == "announcement"
    assert new_line_id("博物馆", {"announcement", "announcement-2"}) == "announcement-3"
    long = new_line_id("Please " * 40, set())
    assert len(long) <= 40 and long.startswith("please-please")
    assert new_line_id("x" * 100, set()) == "x" * 40
    assert option_label("A " * 40) == ("A " * 15).strip()[: OPTION_CHARS - 1].rstrip() + "…"
    assert len(option_label("A " * 40)) <= OPTION_CHARS and option_label("Short.") == "Short."


# -- over HTTP


async def logged_in(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    return service, http, await csrf_of(http, "/schedule")


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("25:00", "25:00 is not a time of day (00:00 to 23:59)"),
        ("24:00", "24:00 is not a time of day (00:00 to 23:59)"),
        ("quarter to five", "&#39;quarter to five&#39; is not a time of day: type hours and minutes, 24-hour, like"),
        ("NaN", "&#39;NaN&#39; is not a time of day"),
        ("4:45 PM", "&#39;4:45 PM&#39; is not a time of day"),
        ("1" * 20_000, "11111111111111111111… is not a time of day"),
    ],
)
async def test_a_time_that_is_not_one_is_refused_beside_its_field_and_kept(staff, typed, message):  # noqa: F811
    service, http, token = await logged_in(staff)
    form = {"csrf": token, "schedule.0.time": typed, "schedule.0.phrase": "quartz", "schedule.0.days": "sat"}
    status, html, _ = await post(http, "/schedule", form)
    assert status == 400 and message in html
    assert 'id="schedule-0-time-error"' in html and 'aria-invalid="true"' in html
    assert f'value="{typed}"' in html.replace("&#39;", "'")  # what was typed stays in the field, unchanged
    assert 'value="sat" checked' in html  # and the rest of the row too
    assert settings_of(service) is None and service.cfg.schedule == ()


async def test_times_are_read_and_saved_as_24_hour(staff):  # noqa: F811
    service, http, token = await logged_in(staff)
    form = {"csrf": token, "schedule.0.time": "9:30", "schedule.0.phrase": "quartz"}
    form |= {"schedule.1.time": "1645", "schedule.1.phrase": "welcome", "schedule.1.days": ["sat", "sun"]}
    assert (await post(http, "/schedule", form))[0] == 303
    assert [(a.time, a.phrase, a.days) for a in service.cfg.schedule] == [
        ("09:30", "quartz", ()),
        ("16:45", "welcome", ("sat", "sun")),
    ]
    _, html, _ = await get(http, "/schedule")
    assert 'value="09:30"' in html and 'value="16:45"' in html and 'type="time"' not in html
    assert 'inputmode="numeric"' in html
    assert "Sat, Sun" in html and "every day" in html
    # The next one is said as the page says dates: "Fri 4 Dec 2026, 16:45" (no seconds, no ISO with a T).
    shown = html.split('<time datetime="')[1].split("</time>")[0].split(">")[1]
    assert shown == moment(datetime.fromisoformat(service.next_announcement()["time"]))


async def test_an_empty_row_is_skipped_and_a_row_without_a_time_or_line_is_refused(staff):  # noqa: F811
    service, http, token = await logged_in(staff)
    empty = {"csrf": token, "schedule.0.time": " ", "schedule.0.phrase": "", "schedule.0.text": ""}
    assert (await post(http, "/schedule", empty))[0] == 303 and service.cfg.schedule == ()
    no_time = {"csrf": token, "schedule.0.time": "", "schedule.0.phrase": "quartz"}
    status, html, _ = await post(http, "/schedule", no_time)
    assert status == 400 and "type a time of day (24-hour, like 16:45)" in html
    no_line = {"csrf": token, "schedule.0.time": "16:45", "schedule.0.phrase": ""}
    status, html, _ = await post(http, "/schedule", no_line)
    assert status == 400 and "choose a line or type the words to say" in html
    both = {"csrf": token, "schedule.0.time": "16:45", "schedule.0.phrase": "quartz", "schedule.0.text": "Hello."}
    status, html, _ = await post(http, "/schedule", both)
    assert status == 400 and "choose a line or type new words, not both" in html and ">Hello.</textarea>" in html
    assert settings_of(service) == {"schedule": []}  # as the empty form saved it


async def test_an_error_stays_beside_the_row_it_was_typed_in(staff):  # noqa: F811
    """Rows removed or left empty before it do not move an error to another row."""
    service, http, token = await logged_in(staff)
    form = {"csrf": token, "schedule.0.time": "10:00", "schedule.0.phrase": "quartz", "schedule.0.remove": "1"}
    form |= {"schedule.1.time": "", "schedule.1.phrase": ""}
    form |= {"schedule.2.time": "11:00", "schedule.2.phrase": "nosuchline", "schedule.2.new": "1"}
    status, html, _ = await post(http, "/schedule", form)
    assert status == 400 and 'id="schedule-2-phrase-error"' in html and "no line &#39;nosuchline&#39; now" in html
    assert 'name="schedule.0.remove" value="1" checked' in html  # the form as it was sent
    assert settings_of(service) is None


async def test_typed_words_become_a_line_and_the_announcement_in_one_save(staff):  # noqa: F811
    service, http, token = await logged_in(staff)
    form = {"csrf": token, "schedule.0.time": "17:45", "schedule.0.phrase": "", "schedule.0.text": f"  {CLOSING}  "}
    form |= {"schedule.0.new": "1"}
    assert (await post(http, "/schedule", form))[0] == 303
    pid = "the-museum-closes-in-15-minutes"
    assert service.cfg.phrases[pid] == CLOSING
    assert [(a.time, a.phrase) for a in service.cfg.schedule] == [("17:45", pid)]
    saved = settings_of(service)
    assert saved["phrases"][pid] == CLOSING and saved["schedule"] == [{"time": "17:45", "phrase": pid}]
    assert load_config(service.config_path).phrases[pid] == CLOSING  # in the file laid over kiosk.yaml
    # Pinned in the cache (never evicted) and warmed like every line: ready offline without anyone asking.
    keys = service.announcer.keys_for(CLOSING)
    assert keys and all(service.announcer.cache.is_pinned(key) for key in keys)
    async with asyncio.timeout(10):
        while pid not in (await service.app.status())["cache"]["ready_ids"]:
            await asyncio.sleep(0.05)
    _, html, _ = await get(http, "/lines")
    assert CLOSING in html
    _, html, _ = await get(http, "/schedule")
    assert f'<time class="at">17:45</time> <span class="when">every day</span> <span class="what">{CLOSING}' in html

    # The same words again: that line, not a second copy; other words with the same id: an id of their own.
    form = {"csrf": token, "schedule.0.time": "17:45", "schedule.0.phrase": pid}
    form |= {"schedule.1.time": "17:50", "schedule.1.text": CLOSING}
    form |= {"schedule.2.time": "17:55", "schedule.2.text": "The museum closes in 15 minutes!"}
    assert (await post(http, "/schedule", form))[0] == 303
    assert [a.phrase for a in service.cfg.schedule] == [pid, pid, f"{pid}-2"]
    assert service.cfg.phrases[f"{pid}-2"] == "The museum closes in 15 minutes!"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Ring the bell\x07 now", "text contains a control character (U+0007 at position 13)"),
        ("x" * 20_001, "text is 20001 characters; the limit is 20000"),
    ],
)
async def test_typed_words_follow_the_rules_for_lines(staff, text, message):  # noqa: F811
    service, http, token = await logged_in(staff)
    form = {"csrf": token, "schedule.0.time": "17:45", "schedule.0.text": text}
    status, html, _ = await post(http, "/schedule", form)
    assert status == 400 and message in html and 'id="schedule-0-text-error"' in html
    assert settings_of(service) is None and len(service.cfg.phrases) == 2


async def test_a_lone_surrogate_is_refused_with_a_message(staff):  # noqa: F811
    """Only a form in another charset than UTF-8 can carry one (a browser sends U+FFFD instead): refused before
    anything is read; the rule for lines would refuse it too."""
    service, http, token = await logged_in(staff)
    body = f"csrf={token}&schedule.0.time=17:45&schedule.0.text=Closing\ud800soon".encode("utf-7", "surrogatepass")
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"}
    status, text, _ = await post(http, "/schedule", body, headers=headers)
    assert status == 415 and "send the form as UTF-8" in text
    assert settings_of(service) is None and len(service.cfg.phrases) == 2
    assert phrase_problem(new_line_id("Closing\ud800soon", set()), "Closing\ud800soon") == (
        "text contains characters that cannot be encoded (a lone surrogate at position 7)"
    )


async def test_a_failing_save_creates_neither_the_line_nor_the_announcement(staff, monkeypatch):  # noqa: F811
    service, http, token = await logged_in(staff)
    # Another row the config refuses: nothing of the form is saved, the typed words included.
    form = {"csrf": token, "schedule.0.time": "17:45", "schedule.0.text": CLOSING}
    form |= {"schedule.1.time": "18:00", "schedule.1.phrase": "gone"}
    status, html, _ = await post(http, "/schedule", form)
    assert status == 400 and "no line &#39;gone&#39; now" in html and 'id="schedule-1-phrase-error"' in html
    assert f">{CLOSING}</textarea>" in html  # still there to save once the other row is put right
    assert settings_of(service) is None and "the-museum-closes-in-15-minutes" not in service.cfg.phrases

    # The disk refuses the write: neither is saved, and the page says why.
    def full_disk(path, settings):
        raise ConfigError(["could not save: No space left on device"])

    monkeypatch.setattr(account, "write_settings", full_disk)
    form = {"csrf": token, "schedule.0.time": "17:45", "schedule.0.text": CLOSING}
    status, html, _ = await post(http, "/schedule", form)
    assert status == 503 and "No space left on device" in html
    assert settings_of(service) is None and service.cfg.schedule == ()
    assert "the-museum-closes-in-15-minutes" not in service.cfg.phrases


# -- in Chromium, at phone and desktop sizes


async def test_schedule_page_in_the_browser_at_both_sizes(tmp_path, server, alsa_file, monkeypatch, browser):
    from test_staff_ux import AXE, DESKTOP, PHONE, check_page, new_page, write_config
    from test_staff_ux import log_in as browser_log_in

    monkeypatch.setenv("OPENAI_API_KEY", "sk-ux-test-not-secret")
    config = write_config(tmp_path, server.url)
    # A long line, as the one that was cut off in the menu ("closing: The r").
    with config.open("a") as f:
        f.write("  closing: The museum closes in fifteen minutes; please make your way to the exit.\n")
    svc = Service(
        load_config(config),
        config_path=config,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(svc.start(), timeout=10)
    try:
        PasswordFile(svc.cfg.staff.password_file).set(PASSWORD)
        axe = AXE.read_text()
        for size_name, size, at, words in (
            ("phone", PHONE, "17:45", CLOSING),
            ("desktop", DESKTOP, "0915", "Good morning: the minerals hall is open."),
        ):
            page = await new_page(browser, size)
            await browser_log_in(page, svc, "/schedule")
            add = page.locator("fieldset", has_text="Add an announcement")
            time_box = add.locator("input.time-of-day")
            assert await time_box.get_attribute("type") == "text"  # no locale AM/PM picker
            await check_page(page, axe, "schedule", size_name)
            await check_menus_fit(page, size)

            # A time that is not one: refused beside the field, what was typed kept.
            await time_box.fill("quarter to five")
            await add.locator("textarea").fill(words)
            await page.click("text=Save schedule")
            error = page.locator(".error", has_text="'quarter to five' is not a time of day")
            await error.wait_for()
            add = page.locator("fieldset", has_text="Add an announcement")
            assert await add.locator("input.time-of-day").input_value() == "quarter to five"
            assert await add.locator("textarea").input_value() == words
            focused = await page.evaluate("document.activeElement.name")
            assert focused == await add.locator("input.time-of-day").get_attribute("name")

            await add.locator("input.time-of-day").fill(at)
            await page.click("text=Save schedule")
            await page.locator('form .form-msg[data-kind="done"]', has_text="Saved").wait_for()
            expected = f"{at[:2]}:{at[2:]}" if ":" not in at else at
            item = page.locator(".schedule-list li", has_text=words)
            await item.wait_for()
            assert (await item.locator(".at").inner_text()) == expected
            saved_times = await page.locator("input.time-of-day").evaluate_all("els => els.map((e) => e.value)")
            assert expected in saved_times and all(":" in t and "M" not in t for t in saved_times if t)
            assert any(a.time == expected for a in svc.cfg.schedule)
            new_id = next(a.phrase for a in svc.cfg.schedule if a.time == expected)
            assert svc.cfg.phrases[new_id] == words
            async with asyncio.timeout(10):  # warmed like every line: ready offline
                while new_id not in (await svc.app.status())["cache"]["ready_ids"]:
                    await asyncio.sleep(0.05)

            # The saved announcement's menu shows its words shortened, and the whole line beneath.
            menu = page.locator(f"select.line-menu:has(option[value='{new_id}']:checked)")
            says = page.locator(f"#{await menu.get_attribute('data-says')}")
            assert await says.inner_text() == f"“{words}”"
            await menu.select_option("closing")
            assert "please make your way to the exit" in await says.inner_text()
            await check_menus_fit(page, size)
            await check_page(page, axe, "schedule-saved", size_name)
            assert not page.test_errors, page.test_errors
            await page.context.close()
        assert svc.cfg.phrases["the-museum-closes-in-15-minutes"] == CLOSING
    finally:
        await svc.stop()


async def check_menus_fit(page, size):
    """Every line menu is inside the screen, and every option's label fits its box (measured in the menu's own
    font, with room for the arrow): nothing is cut off, whichever line is chosen."""
    report = await page.evaluate(
        """() => [...document.querySelectorAll('select.line-menu')].map((select) => {
          const r = select.getBoundingClientRect();
          const style = getComputedStyle(select);
          const ctx = document.createElement('canvas').getContext('2d');
          ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
          const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 24;
          const widths = [...select.options].map((o) => [ctx.measureText(o.label).width, o.label]);
          const [widest, label] = widths.reduce((a, b) => (b[0] > a[0] ? b : a));
          const overflow = select.scrollWidth - select.clientWidth;
          return { left: r.left, right: r.right, room, widest, label, overflow };
        })"""
    )
    assert report
    for menu in report:
        assert menu["left"] >= 0 and menu["right"] <= size["width"], menu
        assert menu["widest"] <= menu["room"], (menu["label"], menu["widest"], menu["room"])
        assert menu["overflow"] <= 0, menu


def test_a_config_problem_whose_message_holds_a_colon_stays_whole_beside_its_field():
    from kiosk.staff.common import _field_errors

    problems = [
        "schedule[0].phrase: no line 'x' in phrases (known keys: welcome, quartz)",
        "/var/lib/kiosk/staff-settings.yaml: openai.speed: must be at most 4",
        "something went wrong: try again",
    ]
    assert _field_errors(problems, None) == {
        "schedule.0.phrase": "no line 'x' in phrases (known keys: welcome, quartz)",
        "speed": "must be at most 4",
        "form": "something went wrong: try again",
    }
