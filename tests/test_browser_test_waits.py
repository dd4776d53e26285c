"""Test quality: browser tests wait for what they read.

Playwright's `locator.all_text_contents()`, `count()` and `is_visible()` do not wait at all, and `inner_text()` /
`text_content()` wait only for the element to exist, not for the text the page renders into it after a click or a
fetch. A read right after an action races the page's rendering (a list read the moment "Items" is clicked comes back
empty on a fast browser).

The rule checked here, per function of every test file that uses Playwright, in source order: a READ (a call of
one of `READS`) must come after a WAIT (`expect(...)`, `.wait_for(...)`, `.wait_for_selector(...)`, ... — not
`wait_for_timeout`), with no ACTION (a call of one of `ACTIONS`, or a helper called with `page`) between that wait
and the read. A function that reads before any wait is flagged too. Loops are not followed: positions in the
source decide. The fix is to wait on what is read: `expect(locator).to_have_count(n)` or `to_have_text(...)`
first, or an `expect` assertion instead of the read.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
READS = {"all_text_contents", "all_inner_texts", "inner_text", "text_content", "inner_html", "count", "is_visible",
         "is_hidden"}  # fmt: skip
WAITS = {"wait_for", "wait_for_selector", "wait_for_function", "wait_for_load_state", "wait_for_url",
         "wait_for_event"}  # fmt: skip
ACTIONS = {"click", "dblclick", "press", "fill", "type", "check", "uncheck", "goto", "reload", "go_back",
           "go_forward", "hover", "tap", "select_option", "set_input_files", "evaluate", "dispatch_event", "focus",
           "set_viewport_size"}  # fmt: skip
NOT_LOCATORS = {"itertools"}  # `itertools.count()` is no read of a page


def _kind(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        if f.id == "expect":
            return "wait"
        if any(isinstance(a, ast.Name) and a.id == "page" for a in call.args):
            return "action"  # a helper that drives the page: login(page, ...), to_item(page, 2)
        return None
    if not isinstance(f, ast.Attribute):
        return None
    if f.attr in WAITS:
        return "wait"
    if f.attr in ACTIONS:
        return "action"
    if f.attr in READS and not (isinstance(f.value, ast.Name) and f.value.id in NOT_LOCATORS):
        return "read"
    return None


def unwaited_reads(source: str, filename: str = "<test>") -> list[str]:
    """'FILE:LINE: FUNCTION: .READ() ...' for every read that breaks the rule of the module docstring."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        calls = sorted((c for c in ast.walk(fn) if isinstance(c, ast.Call)), key=lambda c: (c.lineno, c.col_offset))
        waited = False
        for call in calls:
            kind = _kind(call)
            if kind == "wait":
                waited = True
            elif kind == "action":
                waited = False
            elif kind == "read" and not waited:
                found.append(f"{filename}:{call.lineno}: {fn.name}: .{call.func.attr}() without a wait after the "
                             "last action")  # fmt: skip
    return found


def browser_test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p != Path(__file__).resolve() and "playwright" in p.read_text())


def test_every_browser_test_waits_before_it_reads():
    files = browser_test_files()
    assert len(files) >= 5  # the check looks where the browser tests are
    problems = [msg for p in files for msg in unwaited_reads(p.read_text(), str(p.relative_to(TESTS)))]
    assert problems == []


def test_the_check_flags_a_read_right_after_a_click():
    racy = '''
def test_racy(page):
    page.click("#items-btn")
    names = page.locator("#item-list button").all_text_contents()
'''
    waited = '''
def test_waited(page):
    page.click("#items-btn")
    buttons = page.locator("#item-list button")
    expect(buttons).to_have_count(6)
    names = buttons.all_text_contents()
'''
    helper = '''
def test_after_a_helper(page):
    expect(page.locator("#x")).to_be_visible()
    login(page, url, token)
    assert page.locator("#item-total").inner_text() == "5"
'''
    assert [m.split(": ", 1)[1] for m in unwaited_reads(racy)] == [
        "test_racy: .all_text_contents() without a wait after the last action"]
    assert unwaited_reads(waited) == []
    assert len(unwaited_reads(helper)) == 1
    assert unwaited_reads("import itertools\ndef f():\n    return itertools.count()\n") == []
