"""The admin view and assignment with overlap, in a real browser against the real server started with
`--overlap 2 --assign-seed 3`: each annotator sees only their items, the admin sees progress, Cohen's kappa on the
answers two annotators judged, and downloads the export."""

from __future__ import annotations

import json
import re

from app_site import build, serve
from browser_harness import login, needs_chromium, new_annotator
from playwright.sync_api import expect

pytestmark = needs_chromium


def test_overlap_assignment_and_the_admin_view(browser, tmp_path):
    paths = build(tmp_path)
    tokens = {name: new_annotator(paths["db"], name=name)[1] for name in ("amy", "ben", "cat")}
    _, admin = new_annotator(paths["db"], admin=True, name="boss")
    with serve(paths, "--overlap", 2, "--assign-seed", 3) as url:
        seen: dict[str, list[str]] = {}
        for name in ("amy", "ben"):
            page = browser.new_page()
            login(page, url, tokens[name])
            total = page.locator("#item-total")
            expect(total).to_have_text(re.compile(r"^[56]$"))  # 8 items x 2 / 3 annotators
            page.click("#items-btn")
            buttons = page.locator("#item-list button")
            expect(buttons).to_have_count(int(total.inner_text()))  # the list renders after the click returns
            seen[name] = buttons.all_text_contents()
            page.click("#items-close")
            # Judge every item: amy says correct, ben says correct on the first and incorrect on the rest.
            for k in range(len(seen[name])):
                expect(page.locator("#item-index")).to_have_text(str(k + 1))
                page.keyboard.press("c" if name == "amy" or k == 0 else "i")
                page.fill("#feedback", f"{name} {k}")
                if not page.input_value("#right-answer") and not page.is_checked("#unanswerable"):
                    page.fill("#right-answer", "Rouen")  # "incorrect" on a right abstention: nothing to prefill
                page.keyboard.press("Control+Enter")
            expect(page.locator("#done-view")).to_be_visible()
            page.close()
        assert all(len(v) in (5, 6) for v in seen.values()) and set(seen["amy"]) != set(seen["ben"])

        page = browser.new_page(accept_downloads=True)
        login(page, url, admin)
        expect(page.locator("#item-total")).to_have_text("8")  # the admin sees every item
        page.click("#admin-btn")
        rows = page.locator("#admin-progress tbody tr")
        expect(rows).to_have_count(4)
        expect(rows.locator("td:first-child")).to_have_text(["amy", "ben", "boss (admin)", "cat"])
        expect(page.locator("#admin-agreement")).to_contain_text("each assigned to 2 annotators")
        expect(page.locator("#admin-pairs tbody tr")).to_have_count(1)
        expect(page.locator("#admin-pairs tbody tr td").first).to_have_text("amy & ben")
        with page.expect_download() as download:
            page.click("#export-btn")
        records = [json.loads(line) for line in open(download.value.path(), encoding="utf-8")]
        assert sorted({r["annotator"] for r in records}) == ["human:amy", "human:ben"]
        assert len(records) == sum(map(len, seen.values()))
        page.close()
