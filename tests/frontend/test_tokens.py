"""Heatmaps of real subword records in real Chromium: a `leaf serve` over tiny random models
with a byte-level BPE tokenizer, so records hold leading-space tokens (" pens"), whitespace-
only tokens (" ", "\\n") and words split in pieces ("An" + "n"). Also what a record says
about itself: the unit of its flags, what the models were compared on, its warnings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from leaf_engine.units import is_word
from tests.frontend.conftest import (
    BPE_STUDENT,
    BPE_TEACHER,
    PLAIN_STUDENT,
    WORD_STUDENT,
    Server,
    skip_without_browser,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

skip_without_browser()

pytestmark = pytest.mark.slow

# Words from the tokenizer's training corpus (tests/tiny.py), so BPE merged some of them.
INSTRUCTION = ("Ann has 7 pens. She buys 5 more pens. How many pens does Ann have now?\n\n"
               "Bob had 12 apples and gave 4 to Carl. The sky is blue today.")
OUTPUT = "Ann has 12 pens. The answer is 12."
NARROW = 320  # px: the instruction wraps over many lines


@pytest.fixture(scope="module")
def bpe_api(bpe_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bpe_server.url, timeout=120) as client:
        yield client


def record_of(api: httpx.Client, **body: Any) -> dict[str, Any]:
    """The server's record for INSTRUCTION/OUTPUT (it waits for its worker)."""
    answer = api.post("/detect", json={"instruction": INSTRUCTION, "output": OUTPUT, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def analyse(page: Page, server: Server, *, student: str = BPE_STUDENT, unit: str | None = None,
            tau: float = 0.1) -> None:
    """Type INSTRUCTION/OUTPUT into Analyze and run it with these settings."""
    page.goto(f"{server.url}/")
    page.wait_for_selector(f"#student option[value='{student}']", state="attached")
    page.fill("#instruction", INSTRUCTION)
    page.fill("#output", OUTPUT)
    page.select_option("#teacher", BPE_TEACHER)
    page.select_option("#student", student)
    if unit is not None:
        page.click("details.more summary")
        page.select_option("#unit", unit)
    page.eval_on_selector("#tau", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')) }",
                          str(tau))
    page.click("#run")
    page.wait_for_selector(".heatmap[data-kind='score'] .tok")


# Per drawn token box in the score heatmap: its record index, text, drawn text and rects.
BOXES = """() => [...document.querySelectorAll(".heatmap[data-kind='score'] .tok")].map((t) => {
  const rects = [...t.getClientRects()];
  return { i: Number(t.dataset.i), text: t.dataset.text, drawn: t.textContent,
    rects: rects.map((r) => ({ top: r.top, left: r.left, right: r.right })),
    confounder: t.classList.contains("confounder") };
})"""


def test_leading_space_tokens_keep_their_word_in_one_box_where_lines_wrap(
        browser: Browser, bpe_server: Server, bpe_api: httpx.Client, artifacts: Path) -> None:
    record = record_of(bpe_api, unit="token", tau=0.1)
    leading = [t for t in record["tokens"] if t["text"][:1].isspace() and t["text"].strip()]
    assert len(leading) >= 5, [t["text"] for t in record["tokens"]]
    context = browser.new_context(viewport={"width": NARROW, "height": 900})
    try:
        page = context.new_page()
        analyse(page, bpe_server, unit="token")
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts / "bpe-narrow.png"), full_page=True)
        boxes = page.evaluate(BOXES)
        assert {b["i"] for b in boxes} >= {record["tokens"].index(t) for t in leading}
        # Every box is one rectangle: no token split over two lines...
        split = [b["text"] for b in boxes if len(b["rects"]) != 1]
        assert split == []
        # ...also where a line does wrap right before a leading-space token.
        wrapped = [b["text"] for prev, b in pairwise(boxes)
                   if b["text"][:1].isspace() and b["rects"][0]["top"] > prev["rects"][0]["top"]]
        assert wrapped, "no line wrapped before a leading-space token: make the window narrower"
        # The coloured box holds the word; its space is drawn plain beside it.
        for b in boxes:
            assert b["drawn"] == b["text"].strip()
        # Nothing of the text is lost or doubled.
        assert page.text_content(".heatmap[data-kind='score']") == INSTRUCTION
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW
    finally:
        context.close()


def test_whitespace_tokens_are_plain_text_never_coloured_or_flagged(
        page: Page, bpe_server: Server, bpe_api: httpx.Client) -> None:
    record = record_of(bpe_api, unit="token", tau=1.0)  # every word-bearing token
    blank = {i for i, t in enumerate(record["tokens"]) if not t["text"].strip()}
    assert {record["tokens"][i]["text"] for i in blank} >= {" ", "\n"}
    analyse(page, bpe_server, unit="token", tau=1.0)
    drawn = {b["i"] for b in page.evaluate(BOXES)}
    assert drawn == set(range(len(record["tokens"]))) - blank
    # Only visible text sits on a colour, in all three heatmaps.
    slivers = page.evaluate("""() => [...document.querySelectorAll(".heatmap *")].filter((e) =>
        getComputedStyle(e).backgroundColor !== "rgba(0, 0, 0, 0)" && !e.textContent.trim()
        && !e.matches(".tok:empty")).map((e) => JSON.stringify(e.textContent))""")
    assert slivers == []
    # The page flags what the server flags at tau 1: many tokens, no whitespace among them.
    flagged = {i for i, t in enumerate(record["tokens"]) if t["confounder"]}
    assert len(flagged) > len(drawn) / 2 and not flagged & blank
    assert {b["i"] for b in page.evaluate(BOXES) if b["confounder"]} == flagged


def test_pieces_of_one_word_touch_and_words_keep_their_space(
        page: Page, bpe_server: Server, bpe_api: httpx.Client) -> None:
    record = record_of(bpe_api, unit="token", tau=0.1)
    analyse(page, bpe_server, unit="token")
    boxes = page.evaluate(BOXES)
    joined = spaced = 0
    for a, b in pairwise(boxes):
        ta, tb = record["tokens"][a["i"]], record["tokens"][b["i"]]
        ra, rb = a["rects"][-1], b["rects"][0]
        if ra["top"] != rb["top"]:
            continue  # a line break between them
        touching = INSTRUCTION[ta["end"] - 1:tb["start"] + 1]
        if ta["end"] == tb["start"] and not any(c.isspace() for c in touching):  # "An" + "n"
            joined += 1
            assert rb["left"] - ra["right"] == pytest.approx(0, abs=0.5), (ta["text"], tb["text"])
        elif INSTRUCTION[ta["end"]:tb["start"]].isspace() or tb["text"][:1].isspace():
            spaced += 1
            assert rb["left"] - ra["right"] > 3, (ta["text"], tb["text"])
    assert joined >= 5 and spaced >= 5


def test_the_record_says_its_unit_and_what_the_models_were_compared_on(
        page: Page, bpe_server: Server, bpe_api: httpx.Client) -> None:
    # The default unit: whole words, each entry of the record a word or punctuation mark.
    record = record_of(bpe_api, tau=0.3)
    assert record["params"]["unit"] == "word" and record["params"]["compare"] == "tokens"
    analyse(page, bpe_server, tau=0.3)
    units = page.locator(".record .units")
    assert units.get_attribute("data-unit") == "word"
    assert "per word" in units.inner_text() and "token by token" in units.inner_text()
    words = sum(t["confounder"] for t in record["tokens"])
    assert words >= 2
    assert page.get_attribute(".flag-summary", "data-flagged") == str(words)
    assert page.inner_text(".flag-summary").startswith(f"{words} words flagged in ")
    words_scored = sum(is_word(t["text"]) for t in record["tokens"])
    assert 0 < words_scored < len(record["tokens"])  # punctuation is listed, not counted
    assert page.text_content("#analyze-status") == f"Done: {words_scored} words scored."
    assert "tokens flagged" not in page.inner_text("main")

    # Sentences: flagged words of one sentence count once.
    record = record_of(bpe_api, unit="sentence", tau=0.3)
    analyse(page, bpe_server, unit="sentence", tau=0.3)
    sentences = flagged_sentences(record)
    assert 1 <= sentences < sum(t["confounder"] for t in record["tokens"])
    assert page.inner_text(".flag-summary").startswith(
        f"{sentences} sentence{'s' if sentences > 1 else ''} flagged in ")

    # The paper's token cut: tokens.
    analyse(page, bpe_server, unit="token", tau=0.3)
    assert " tokens flagged in " in page.inner_text(".flag-summary")
    assert "per token" in page.inner_text(".record .units")

    # Two tokenizers: compared on words, the record's entries are words.
    record = record_of(bpe_api, student=WORD_STUDENT, unit="token", tau=0.3)
    assert record["params"]["compare"] == "words" and record["params"]["unit"] == "word"
    analyse(page, bpe_server, student=WORD_STUDENT, unit="token", tau=0.3)
    assert "compared on words" in page.inner_text(".record .units")
    words_scored = sum(is_word(t["text"]) for t in record["tokens"])
    assert page.text_content("#analyze-status") == f"Done: {words_scored} words scored."
    assert " words flagged in " in page.inner_text(".flag-summary")


def flagged_sentences(record: dict[str, Any]) -> int:
    """How many sentences of the instruction hold a flagged entry, as the server groups them."""
    from leaf_engine.analysis import unit_ids
    from leaf_engine.records import ContextToken

    tokens = [ContextToken("instruction", t["start"], t["end"]) for t in record["tokens"]]
    ids = unit_ids(tokens, {"instruction": record["instruction"]}, "sentence")
    return len({int(ids[i]) for i, t in enumerate(record["tokens"]) if t["confounder"]})


def test_a_records_warnings_are_shown_as_text(page: Page, bpe_server: Server,
                                              bpe_api: httpx.Client) -> None:
    record = record_of(bpe_api, student=PLAIN_STUDENT)
    assert record["warnings"] and any(PLAIN_STUDENT in w for w in record["warnings"])
    analyse(page, bpe_server, student=PLAIN_STUDENT)
    banner = page.locator(".record .warnings")
    assert banner.is_visible()
    assert banner.locator("li").all_inner_texts() == record["warnings"]

    # Stored records, drawn again: markup in a warning stays text; a token-level record as
    # written before warnings and compare existed draws as before, without a banner.
    markup = '<img src=x onerror="window.pwned = 1"><b>bold</b>'
    old = record_of(bpe_api, unit="token")
    old.pop("warnings", None)
    assert old["params"].pop("compare") == "tokens"
    drawn = page.evaluate("""async ([record, markup, old]) => {
        const { recordView } = await import("./record.js");
        const threshold = { mode: "tau", tau: 0.1, percentile: 5 };
        const marked = recordView({ ...record, warnings: [markup] }, { threshold });
        const plain = recordView(old, { threshold });
        document.querySelector("main").append(marked.el, plain.el);
        await new Promise((done) => setTimeout(done, 50));
        return { marked: marked.el.querySelector(".warnings li").textContent,
          images: document.querySelectorAll("main img, main .warnings b").length,
          oldBanner: plain.el.querySelectorAll(".warnings").length,
          oldUnits: plain.el.querySelector(".units").textContent,
          oldConsistent: plain.el.dataset.consistent };
    }""", [record, markup, old])
    assert drawn["marked"] == markup and drawn["images"] == 0
    assert page.evaluate("window.pwned") is None
    assert drawn["oldBanner"] == 0 and drawn["oldUnits"] == "Flags decided per token."
    assert drawn["oldConsistent"] == "true"


def test_a_jobs_records_state_their_shared_warnings_once(
        page: Page, bpe_server: Server, bpe_api: httpx.Client, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "instruction": text, "output": "The answer is 12."}
            for i, text in enumerate([INSTRUCTION, "Bob had 12 apples and gave 4 to Carl.",
                                      "Ann has 7 pens. She buys 5 more pens."])]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with data.open("rb") as handle:
        dataset_id = bpe_api.post("/datasets", files={"file": handle}).json()["id"]
    # Unit token at tau 0.3 cuts inside words: each record also has a warning of its own.
    job_id = bpe_api.post("/jobs", json={"kind": "detect", "dataset_id": dataset_id,
                                         "teacher": BPE_TEACHER, "student": PLAIN_STUDENT,
                                         "unit": "token", "tau": 0.3}).json()["id"]
    page.goto(f"{bpe_server.url}/#/jobs/{job_id}")
    page.wait_for_selector(".records .record", timeout=120_000)
    records = bpe_api.get(f"/jobs/{job_id}/records").json()["records"]
    shared = [w for w in records[0]["warnings"] if all(w in r["warnings"] for r in records)]
    assert len(shared) == 1 and PLAIN_STUDENT in shared[0]
    assert page.locator(".common-warnings .warnings li").all_inner_texts() == shared
    own = [page.locator(f".record[data-id='{r['id']}'] .warnings li").all_inner_texts()
           for r in records]
    assert own == [[w for w in r["warnings"] if w not in shared] for r in records]
    assert any(own), "no record had a warning of its own"
    assert page.inner_text(".summary dl.defs").count("flagged tokens") == 1
