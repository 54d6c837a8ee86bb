"""The dashboard's jobs list against a server that filters by task and pages
(``GET /jobs?task=&before=`` answering ``next``): the task filter shows, and Older and
Newest walk the pages.  The same server has two periodic tasks: the Periodic tab shows
them with their next run (``GET /tasks``) and their catch-up run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pytest

from .conftest import Pages, Server, http, missing_playwright, run_server

if missing_playwright():
    pytest.skip(missing_playwright(), allow_module_level=True)

from playwright.sync_api import Page, expect


@pytest.fixture
def periodic_server() -> Iterator[Server]:
    """The browser tests' tasks and two periodic ones (tests/browser/app.py)."""
    with run_server("--app", "tests.browser.app:with_periodic") as srv:
        yield srv


def local(iso: str) -> str:
    """An RFC 3339 time as the page shows it: this machine's local time, with ms."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def check_periodic_tab(page: Page, url: str) -> None:
    tasks = {t["name"]: t for t in http("GET", f"{url}/tasks").json()["tasks"]}
    epoch, new_year = tasks["epoch"], tasks["new_year"]
    assert epoch["next_run"] == "2033-05-18T03:33:20.000000Z"
    assert new_year["schedule"] == "0 0 1 1 *"
    assert tasks["echo"]["next_run"] is None
    expect(page.locator("#periodic-count")).to_have_text("2")  # loaded on connect
    page.locator("#tabs button[data-tab=periodic]").click()
    rows = page.locator("#periodic-body tr")
    expect(rows).to_have_count(2)  # the periodic ones only, by name
    row = page.locator('#periodic-body tr[data-task="epoch"]')
    expect(row.locator("td")).to_have_text([
        "epoch", "every 1,000,000,000 s", "low", local(epoch["next_run"]),
        re.compile(r"^in [\d,]+ d$"), "epoch@2001-09-09T01:46:40.000Z", "completed"])
    row = page.locator('#periodic-body tr[data-task="new_year"]')
    assert new_year["next_run"].endswith("-01-01T00:00:00.000000Z"), new_year
    expect(row.locator("td").nth(1)).to_have_text("cron 0 0 1 1 * (UTC)")
    expect(row.locator("td").nth(3)).to_have_text(local(new_year["next_run"]))
    # The catch-up run the queue enqueued at start opens like any job.
    year = int(new_year["next_run"][:4]) - 1
    catch_up = f"new_year@{year}-01-01T00:00:00.000Z"
    row.locator(f'button[data-job="{catch_up}"]').click()
    expect(page.locator("#detail")).to_have_attribute("data-status", "completed")
    expect(page.locator("#d-id")).to_have_text(catch_up)
    page.locator("#d-close").click()


def test_the_task_filter_shows_and_older_pages_through_the_jobs(
    periodic_server: Server, pages: Pages
) -> None:
    server = periodic_server
    echo_ids = []
    for i in range(55):  # more than one page (50) of echo jobs
        response = http("POST", f"{server.url}/jobs", json={"task": "echo", "payload": i})
        assert response.status_code == 202, response.text
        echo_ids.append(response.json()["id"])
    response = http("POST", f"{server.url}/jobs", json={"task": "boom"})
    boom_id = response.json()["id"]

    first = http("GET", f"{server.url}/jobs", params={"task": "echo", "limit": 50}).json()
    assert first["next"] == echo_ids[5]
    older = http("GET", f"{server.url}/jobs",
                 params={"task": "echo", "limit": 50, "before": first["next"]}).json()
    assert [j["id"] for j in older["jobs"]] == echo_ids[4::-1]
    assert older["next"] is None

    page = pages.open(server.url + "/")
    expect(page.locator("#badge")).to_have_text("live")
    page.locator("#tabs button[data-tab=jobs]").click()
    expect(page.locator("#jobs-task-label")).to_be_visible()  # the server pages: shown
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-id", boom_id)

    # Tab commits the value (one change event) and leaves the field, so that no second
    # change fires when Older is clicked later.
    page.locator("#jobs-task").fill("echo")
    page.locator("#jobs-task").press("Tab")
    expect(rows.first).to_have_attribute("data-id", echo_ids[-1])
    expect(rows).to_have_count(50)
    expect(page.locator("#jobs-older")).to_be_visible()
    page.locator("#jobs-older").click()
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-id", echo_ids[4])
    expect(page.locator("#jobs-older")).to_be_hidden()
    page.locator("#jobs-newest").click()
    expect(rows.first).to_have_attribute("data-id", echo_ids[-1])

    page.locator("#jobs-task").fill("boom")
    page.locator("#jobs-task").press("Tab")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", boom_id)

    check_periodic_tab(page, server.url)
