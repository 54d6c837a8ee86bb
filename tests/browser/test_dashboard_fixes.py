"""The dashboard in Chromium: what a user's probe found, each fixed and kept so.

- the Jobs list and the dead letters stay capped (50, 200) while live events add to them,
  whether or not their tab is shown (the page writes how many it holds to
  ``data-kept`` on each table);
- long job ids and task names are cut short, so the page is no wider than the window
  (1280 px), and at 375 px the tables scroll inside their panels, not the page;
- the job detail panel leaves the header, and its tabs, in reach;
- a token in the link's fragment is percent-decoded only (a ``+`` stays a ``+``);
- durations read as people write them ("2 min 30 s", "500 ms");
- keyboard focus moves into the detail panel and back to what opened it;
- a progress report in the live feed is shown as progress, not as an error.

Layout is read through Playwright's ``evaluate`` (``scrollWidth`` and ``clientWidth``,
read only); everything else is in the DOM the page draws.  Jobs are made over the
server's HTTP API, and every wait is for a condition.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .app import LONG_TASK
from .conftest import Pages, Server, http, missing_playwright, poll, run_server

if missing_playwright():  # under CI the import below fails instead: these tests must run
    pytest.skip(str(missing_playwright()), allow_module_level=True)

from playwright.sync_api import Locator, Page, expect

TABS = ("overview", "jobs", "dead", "workers", "periodic")


@pytest.fixture
def periodic_server() -> Iterator[Server]:
    """The browser tests' tasks, the long-named one, and two periodic tasks; running jobs
    are not waited for when it stops."""
    with run_server("--app", "tests.browser.app:with_periodic",
                    "--shutdown-timeout", "0") as srv:
        yield srv


def open_live(pages: Pages, url: str, width: int = 1280, height: int = 800) -> Page:
    """A page in a fresh context of this size, watched as ``pages.open`` watches its
    pages (no console error, warning or CSP violation), once it is live."""
    context = pages.browser.new_context(viewport={"width": width, "height": height})
    pages.opened.append(context)
    page = context.new_page()
    console = pages.console
    page.on("console", lambda message: console.on_console(message))
    page.on("pageerror", lambda error: console.on_error(error))
    page.goto(url)
    expect(page.locator("#badge")).to_have_text("live")
    return page


def post(url: str, body: dict[str, object], token: str | None = None) -> str:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = http("POST", f"{url}/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def post_batch(url: str, bodies: list[dict[str, object]]) -> list[str]:
    """The jobs of ``bodies`` in one ``POST /jobs/batch`` (made in this order)."""
    response = http("POST", f"{url}/jobs/batch", json={"jobs": bodies})
    assert response.status_code == 202, response.text
    ids: list[str] = [job["id"] for job in response.json()["jobs"]]
    return ids


def metric(url: str, name: str) -> int:
    value: int = http("GET", f"{url}/metrics").json()[name]
    return value


def wait_failed(url: str, n: int) -> None:
    poll(lambda: metric(url, "failed") == n, what=f"{n} failed jobs")


def show(page: Page, tab: str) -> None:
    page.locator(f"#tabs button[data-tab={tab}]").click()
    expect(page.locator(f"#view-{tab}")).to_be_visible()


def sideways(page: Page) -> int:
    """How many pixels the page itself scrolls sideways (0: it does not)."""
    width: int = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    return width


def overflow(box: Locator) -> int:
    """How many pixels of ``box``'s content lie beyond its width."""
    width: int = box.evaluate("e => e.scrollWidth - e.clientWidth")
    return width


# ---------------------------------------------------------------------------- caps


def test_the_jobs_list_stays_capped_while_its_tab_is_hidden(server: Server,
                                                             pages: Pages) -> None:
    """New jobs were added to the list without limit while the Jobs tab was not shown
    (trimmed only when it was drawn): 50 to 250 in 40 s at 5 jobs a second."""
    # Delayed jobs: each has one `scheduled` event, which adds it to the list.  The first
    # 48 are there when the page loads the list; the other 12 come live, in one burst
    # that the page's max_rate (20 events a second, the server's bucket holding one
    # second's worth) lets through whole, so that no `lagged` reload trims the list
    # behind the test's back.
    ids = [f"cap-{i:03d}" for i in range(60)]
    post_batch(server.url, [{"task": "echo", "id": i, "delay": 3600} for i in ids[:48]])
    page = open_live(pages, server.url + "/")
    jobs = page.locator("#jobs")
    expect(jobs).to_have_attribute("data-kept", "48")  # loaded, not drawn: the tab is hidden
    post_batch(server.url, [{"task": "echo", "id": i, "delay": 3600} for i in ids[48:]])
    expect(page.locator(f'#feed-body button[data-job="{ids[-1]}"]')).to_have_count(1)
    expect(page.locator("#feed-body tr.ev-scheduled")).to_have_count(12)  # none dropped
    expect(jobs).to_have_attribute("data-kept", "50")  # not 60
    show(page, "jobs")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-id", ids[-1])
    expect(rows.last).to_have_attribute("data-id", ids[10])
    expect(jobs).to_have_attribute("data-kept", "50")


def test_live_dead_letters_stay_capped_at_200(server: Server, pages: Pages) -> None:
    """Failures that came live were added uncapped (300 rows, the count "300"); only a
    reload brought them back to 200, with the count "200+"."""
    # The first three fail one after another, so that they are the oldest three; the
    # rest in one batch.
    before = []
    for i in range(3):
        before.append(post(server.url, {"task": "boom", "id": f"dead-{i:03d}",
                                        "payload": {"message": "early"}}))
        wait_failed(server.url, i + 1)
    before += post_batch(server.url, [{"task": "boom", "id": f"dead-{i:03d}",
                                       "payload": {"message": "early"}}
                                      for i in range(3, 198)])
    wait_failed(server.url, 198)
    page = open_live(pages, server.url + "/")
    show(page, "dead")
    rows = page.locator("#dead-body tr")
    expect(rows).to_have_count(198)
    count = page.locator("#dead-count")
    expect(count).to_have_text("198")

    # One at a time, each failed before the next is made (so that the last made is the
    # newest), live: 3 events each, 12 in all, under the page's max_rate of 20 a second
    # (no `lagged` reload).  The page is looked at after the second and the fourth.
    late = []
    for i in range(4):
        late.append(post(server.url, {"task": "boom", "id": f"late-{i}",
                                      "payload": {"message": "late"}}))
        wait_failed(server.url, 199 + i)
        if i == 1:  # exactly 200: all of them, and the count says so
            expect(page.locator(f'#dead-body tr[data-id="{late[1]}"]')).to_have_count(1)
            expect(rows).to_have_count(200)
            expect(count).to_have_text("200")
    for job_id in late:
        expect(page.locator(f'#dead-body tr[data-id="{job_id}"]')).to_have_count(1)
    # Over 200: the oldest go, and the count says there are more.
    expect(rows).to_have_count(200)
    expect(page.locator("#dead")).to_have_attribute("data-kept", "200")
    expect(count).to_have_text("200+")
    expect(page.locator("#dead-note")).to_have_text("Showing 200 (the newest) failed jobs.")
    expect(page.locator(f'#dead-body tr[data-id="{before[0]}"]')).to_have_count(0)
    expect(page.locator(f'#dead-body tr[data-id="{before[1]}"]')).to_have_count(0)
    expect(page.locator(f'#dead-body tr[data-id="{before[2]}"]')).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", late[-1])

    # A reload agrees: the newest 200, "200+".
    page.reload()
    expect(page.locator("#badge")).to_have_text("live")
    show(page, "dead")
    expect(rows).to_have_count(200)
    expect(count).to_have_text("200+")


# ---------------------------------------------------------------------------- layout


def test_long_ids_and_task_names_do_not_widen_the_page(periodic_server: Server,
                                                       pages: Pages) -> None:
    """A 128-character id or a 192-character task name made the page 2,000 to 3,000 px
    wide at 1280 (the dead letters' errors and Retry buttons off-screen)."""
    server = periodic_server
    done, failed, running = "T" + "t" * 127, "B" + "b" * 127, "S" + "s" * 127
    page = open_live(pages, server.url + "/")
    post(server.url, {"task": LONG_TASK, "id": done, "payload": 1})
    post(server.url, {"task": "boom", "id": failed,
                      "payload": {"message": "a long failure " * 20}})
    post(server.url, {"task": "sleep", "id": running, "payload": {"seconds": 60}})

    def fits(tab: str) -> None:
        assert sideways(page) == 0, tab
        wraps = page.locator(f"#view-{tab} .table-wrap")
        for i in range(wraps.count()):
            assert overflow(wraps.nth(i)) == 0, (tab, i)  # each table fits its panel

    expect(page.locator(f'#feed-body tr.ev-started button[data-job="{running}"]')).to_have_count(1)
    expect(page.locator(f'#feed-body tr.ev-failed button[data-job="{failed}"]')).to_have_count(1)
    link = page.locator(f'#feed-body tr.ev-completed button[data-job="{done}"]')
    expect(link).to_have_count(1)
    fits("overview")
    expect(link).to_have_attribute("title", done)  # the whole id in its tooltip
    task = page.locator(f'#feed-body tr.ev-completed:has(button[data-job="{done}"]) td.clip')
    expect(task).to_have_text(LONG_TASK)
    expect(task).to_have_attribute("title", LONG_TASK)

    show(page, "jobs")
    for job_id in (done, failed, running):
        expect(page.locator(f'#jobs-body tr[data-id="{job_id}"]')).to_have_count(1)
    fits("jobs")
    show(page, "dead")
    row = page.locator(f'#dead-body tr[data-id="{failed}"]')
    expect(row).to_have_count(1)
    fits("dead")
    retry = row.get_by_role("button", name="Retry")
    box = retry.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= 1280, box  # on screen
    show(page, "workers")
    expect(page.locator(f'#running-body button[data-job="{running}"]')).to_have_count(1)
    fits("workers")
    show(page, "periodic")
    expect(page.locator("#periodic-body tr")).to_have_count(2)
    fits("periodic")

    # The detail has the whole id and task name, wrapped inside the panel.
    show(page, "jobs")
    page.locator(f'#jobs-body button[data-job="{done}"]').click()
    expect(page.locator("#d-id")).to_have_text(done)
    expect(page.locator("#d-task")).to_have_text(LONG_TASK)
    expect(page.locator("#detail")).to_have_attribute("data-status", "completed")
    assert overflow(page.locator("#detail")) == 0
    assert sideways(page) == 0


def test_at_375_px_tables_scroll_inside_their_panels(periodic_server: Server,
                                                     pages: Pages) -> None:
    """At 375 px the tables ran out of their panels and the page scrolled sideways."""
    server = periodic_server
    page = open_live(pages, server.url + "/", width=375)
    post(server.url, {"task": "echo", "payload": 1})
    failed = post(server.url, {"task": "boom", "payload": {"message": "a failure " * 10}})
    running = post(server.url, {"task": "sleep", "payload": {"seconds": 60}})
    expect(page.locator(f'#feed-body tr.ev-started button[data-job="{running}"]')).to_have_count(1)
    waits = {
        "overview": page.locator(f'#feed-body tr.ev-failed button[data-job="{failed}"]'),
        "jobs": page.locator(f'#jobs-body tr[data-id="{running}"]'),
        "dead": page.locator(f'#dead-body tr[data-id="{failed}"]'),
        "workers": page.locator(f'#running-body button[data-job="{running}"]'),
        "periodic": page.locator('#periodic-body tr[data-task="epoch"]'),
    }
    for tab in TABS:
        if tab != "overview":
            show(page, tab)
        expect(waits[tab]).to_have_count(1)
        assert sideways(page) == 0, tab
        view = page.locator(f"#view-{tab}").bounding_box()
        assert view is not None
        wraps = page.locator(f"#view-{tab} .table-wrap")
        assert wraps.count() >= 1
        for i in range(wraps.count()):
            box = wraps.nth(i).bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= view["x"] + view["width"] + 0.5, (tab, i, box)
    # The Periodic table ran out of its panel's border: it stays inside, and scrolls.
    panel = page.locator("#view-periodic .panel").bounding_box()
    wrap = page.locator("#view-periodic .table-wrap")
    box = wrap.bounding_box()
    assert panel is not None
    assert box is not None
    assert box["x"] + box["width"] < panel["x"] + panel["width"], (box, panel)
    assert overflow(wrap) > 0  # wider than the panel: it scrolls in its own box


# ---------------------------------------------------------------------------- detail


@pytest.mark.parametrize("width", [1280, 375])
def test_the_detail_panel_leaves_the_tabs_in_reach(server: Server, pages: Pages,
                                                   width: int) -> None:
    """The panel was fixed to the top of the window, over the header: at 1280 px a click
    on any tab landed on the panel."""
    failed = post(server.url, {"task": "boom", "payload": {"message": "for the detail"}})
    page = open_live(pages, server.url + "/", width=width)
    show(page, "dead")
    page.locator(f'#dead-body button[data-job="{failed}"]').click()
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-status", "failed")
    for tab in (*TABS[1:], TABS[0]):
        # A click that would land on the panel times out ("intercepts pointer events").
        page.locator(f"#tabs button[data-tab={tab}]").click(timeout=5000)
        expect(page.locator(f"#view-{tab}")).to_be_visible()
        expect(page.locator(f"#tabs button[data-tab={tab}]")).to_have_attribute(
            "aria-pressed", "true")
    expect(detail).to_be_visible()  # it stays open as the tabs change
    header = page.locator("#top").bounding_box()
    panel = detail.bounding_box()
    assert header is not None
    assert panel is not None
    assert panel["y"] >= header["y"] + header["height"] - 0.5, (panel, header)
    expect(page.locator("#d-close")).to_be_in_viewport()
    page.locator("#d-close").click()
    expect(detail).to_be_hidden()


# ---------------------------------------------------------------------------- the token


def test_a_token_with_a_plus_in_the_fragment_is_taken_as_it_is(pages: Pages) -> None:
    """``#token=Zm9v+YmFy/cXV4=`` was refused: URLSearchParams made the ``+`` a space."""
    token = "Zm9v+YmFy/cXV4="
    with run_server(token=token) as srv:
        line = srv.next_line()
        assert line == f"trioqueue dashboard: {srv.url}/ (open {srv.url}/#token=<the token>)"
        # As it is, pasted after "#token=" (what the line above tells one to do).
        raw = open_live(pages, f"{srv.url}/#token={token}")
        assert raw.url == srv.url + "/"
        expect(raw.locator("#auth")).to_be_hidden()
        # Percent-encoded, as the link printed to a terminal has it; another part of the
        # fragment stays as it was.
        encoded = open_live(pages, f"{srv.url}/#view=x&token=Zm9v%2BYmFy%2FcXV4%3D")
        assert encoded.url == srv.url + "/#view=x"
        # The token reaches the API too (the dead letters load with it).
        job = post(srv.url, {"task": "boom", "payload": {"message": "with a plus"}}, token)
        show(raw, "dead")
        expect(raw.locator(f'#dead-body tr[data-id="{job}"]')).to_have_count(1)
        pages.close()


# ---------------------------------------------------------------------------- durations


def test_durations_read_as_people_write_them(server: Server, pages: Pages) -> None:
    """A timeout of 150 s showed as "3 min", 3599 s as "60 min", 90 s as "90.00 s",
    0.5 s as "500.0 ms"."""
    expected = {150: "2 min 30 s", 3599: "59 min 59 s", 90: "1 min 30 s", 0.5: "500 ms",
                5: "5 s", 1.25: "1.25 s", 0.0123: "12.3 ms", 60: "1 min", 7200: "2 h",
                5430: "1 h 31 min", 273600: "3 d 4 h"}
    ids = {}
    for i, timeout in enumerate(expected):
        ids[timeout] = post(server.url, {"task": "echo", "id": f"timeout-{i}", "payload": 1,
                                         "timeout": timeout})
    page = open_live(pages, server.url + "/")
    show(page, "jobs")
    for timeout, text in expected.items():
        page.locator("#find-id").fill(ids[timeout])
        page.locator("#find-id").press("Enter")
        expect(page.locator("#d-id")).to_have_text(ids[timeout])
        expect(page.locator("#d-timeout")).to_have_text(text)
    # The latency table uses the same formatter: no "90.00 s" or "500.0 ms" style there.
    show(page, "overview")
    cells = page.locator('#latency-body tr[data-priority="all"] td')
    for i in range(2, 6):
        text = cells.nth(i).inner_text()
        assert not text.endswith(".0 ms"), text
        assert not text.endswith(".00 s"), text


# ---------------------------------------------------------------------------- keyboard


def test_focus_moves_into_the_detail_and_back_to_what_opened_it(server: Server,
                                                                 pages: Pages) -> None:
    """Opened with Enter, the panel left the focus on the link behind it: the Close
    button was many Tab presses away, and Escape left the focus nowhere."""
    failed = post(server.url, {"task": "boom", "payload": {"message": "keyboard"}})
    page = open_live(pages, server.url + "/")
    show(page, "dead")
    link = page.locator(f'#dead-body button[data-job="{failed}"]')
    close = page.locator("#d-close")
    link.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(close).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(link).to_be_focused()
    # Again, closed with the Close button from the keyboard.
    page.keyboard.press("Enter")
    expect(close).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_hidden()
    expect(link).to_be_focused()
    # Find by id: back to the field.
    show(page, "jobs")
    find = page.locator("#find-id")
    find.fill(failed)
    find.press("Enter")
    expect(page.locator("#d-id")).to_have_text(failed)
    expect(close).to_be_focused()
    page.keyboard.press("Escape")
    expect(find).to_be_focused()


# ---------------------------------------------------------------------------- feed


def test_a_progress_note_in_the_feed_is_not_shown_as_an_error(server: Server,
                                                              pages: Pages) -> None:
    """Progress notes were drawn in red under the "error" column."""
    page = open_live(pages, server.url + "/")
    post(server.url, {"task": "halfway", "payload": {"note": "half way", "seconds": 0.2}})
    row = page.locator("#feed-body tr.ev-progress")
    cell = row.locator("td.progress")
    expect(cell).to_have_text("50 % half way")
    expect(row.locator("td.error")).to_have_count(0)
    expect(cell).not_to_have_css("color", "rgb(198, 59, 59)")  # --bad, the errors' red
    expect(page.locator("#feed thead th").last).to_have_text("error / progress")
    failed = post(server.url, {"task": "boom", "payload": {"message": "a real error"}})
    error = page.locator(f'#feed-body tr.ev-failed:has(button[data-job="{failed}"]) td.error')
    expect(error).to_have_text("Boom: a real error")
    expect(error).to_have_css("color", "rgb(198, 59, 59)")
