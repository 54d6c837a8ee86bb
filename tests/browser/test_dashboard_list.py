"""The dashboard's jobs list against a server that filters by task and pages
(``GET /jobs?task=&before=`` answering ``next``): the task filter shows, and Older and
Newest walk the pages."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Pages, Server, missing_playwright

if missing_playwright():
    pytest.skip(missing_playwright(), allow_module_level=True)

from playwright.sync_api import expect


def test_the_task_filter_shows_and_older_pages_through_the_jobs(
    server: Server, pages: Pages
) -> None:
    echo_ids = []
    for i in range(55):  # more than one page (50) of echo jobs
        response = httpx.post(f"{server.url}/jobs", json={"task": "echo", "payload": i},
                              timeout=10)
        assert response.status_code == 202, response.text
        echo_ids.append(response.json()["id"])
    response = httpx.post(f"{server.url}/jobs", json={"task": "boom"}, timeout=10)
    boom_id = response.json()["id"]

    first = httpx.get(f"{server.url}/jobs", params={"task": "echo", "limit": 50}).json()
    assert first["next"] == echo_ids[5]
    older = httpx.get(f"{server.url}/jobs",
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
