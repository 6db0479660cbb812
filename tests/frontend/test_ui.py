"""The browser UI in real Chromium against a real `leaf serve`: analysis heatmaps, the live
threshold (checked against the server's own answers), keyboard use, datasets and jobs, narrow
windows and the token dialog."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from leaf_engine.analysis import DetectConfig, unit_ids
from leaf_engine.prune import find_spans, remove_spans, span_pruned
from leaf_engine.records import ContextToken
from leaf_engine.units import is_word
from leaf_service.jobs import MODEL_ARCHIVE, RESUME_ARCHIVE
from tests.frontend.conftest import API_TOKEN, ROOT, Server, skip_without_browser
from tests.service import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

skip_without_browser()

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo.jsonl"
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot-analyze.png"
DOCS_REPORT_SCREENSHOT = ROOT / "docs" / "screenshot-report.png"
EXAMPLE = "demo-1"  # two distractor sentences: flags change visibly with tau
JOB_TIMEOUT_MS = 120_000


def analyse(page: Page, server: Server, example: str = EXAMPLE) -> dict[str, str]:
    """Open Analyze, pick a demo example, run it; answer the text that was analysed."""
    page.goto(f"{server.url}/")
    page.wait_for_selector(f"#example option[value='{example}']", state="attached")
    page.select_option("#example", example)
    page.click("#run")
    page.wait_for_selector(".heatmap[data-kind='score'] .tok")
    return {"instruction": page.input_value("#instruction"),
            "output": page.input_value("#output")}


def detect(api: httpx.Client, text: dict[str, Any], **threshold: float) -> dict[str, Any]:
    """The server's own record for the same prompt: from its cache once the page asked,
    else after following the job its 202 names."""
    body = {**text, **threshold}
    answer = api.post("/detect", json=body)
    if answer.status_code == 202:
        job_id = answer.json()["job_id"]
        wait_for(lambda: api.get(f"/jobs/{job_id}").json()["status"] == "finished",
                 timeout=JOB_TIMEOUT_MS / 1000, every=0.05)
        answer = api.post("/detect", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def visible(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tokens the heatmap draws as boxes, in text order: whitespace-only ones are plain
    text there (and never flagged)."""
    return sorted((t for t in tokens if t["text"].strip()), key=lambda t: t["start"])


def shown(page: Page) -> dict[str, Any]:
    """What the page shows: per-token numbers and flags, spans, pruned prompts."""
    return page.evaluate("""() => {
        const toks = [...document.querySelectorAll(".heatmap[data-kind='score'] .tok")];
        const cf = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
        const summary = document.querySelector(".flag-summary");
        return {
          tokens: toks.map((t) => ({text: t.dataset.text, drawn: t.textContent,
            teacher: t.dataset.teacher, student: t.dataset.student, score: t.dataset.score,
            confounder: t.classList.contains("confounder")})),
          flagged: Number(summary.dataset.tokens), spans: Number(summary.dataset.spans),
          collective: cf(".cf.collective .pruned-text"), pruned: cf(".cf.span .pruned-text"),
          spanAttrs: cf(".cf.span").length ? [...document.querySelectorAll(".cf.span")]
            .map((e) => e.dataset.span) : [],
        };
    }""")


def assert_matches(page_view: dict[str, Any], record: dict[str, Any]) -> None:
    """The page's flags, spans and pruned prompts equal the server's record."""
    tokens = visible(record["tokens"])
    assert [t["confounder"] for t in page_view["tokens"]] == [t["confounder"] for t in tokens]
    assert page_view["flagged"] == sum(t["confounder"] for t in record["tokens"])
    assert page_view["spanAttrs"] == [f"{s},{e}" for s, e in record["spans"]]
    assert page_view["pruned"] == [p["instruction"] for p in record["pruned"]]
    expected_collective = [record["collective"]] if record["spans"] else []
    assert page_view["collective"] == expected_collective


def press(page: Page, selector: str, key: str, times: int) -> None:
    page.focus(selector)
    for _ in range(times):
        page.keyboard.press(key)


# ---------------------------------------------------------------------------- analyze


def test_analysis_shows_every_tokens_scores_and_the_servers_flags(
        page: Page, server: Server, api: httpx.Client, artifacts: Path) -> None:
    # demo-0's distractor ("His brother has 15 stamps") has its number flagged at 0.1.
    text = analyse(page, server, "demo-0")
    record = detect(api, text, tau=0.1)
    view = shown(page)

    tokens = visible(record["tokens"])
    assert len(view["tokens"]) == len(tokens) > 5
    for kind in ("teacher", "student", "score"):
        elements = page.locator(f".heatmap[data-kind='{kind}'] .tok")
        assert elements.count() == len(tokens)
    for got, want in zip(view["tokens"], tokens, strict=True):
        assert got["text"] == want["text"]
        for key in ("teacher", "student", "score"):
            value = float(got[key])  # numeric, not empty or "undefined"
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(want[key], abs=1e-9)
    assert view["flagged"] >= 1 and page.locator(".tok.confounder").count() >= 1
    assert_matches(view, record)
    assert page.get_attribute(".record", "data-consistent") == "true"
    # Removed text is struck through beside each counterfactual.
    assert page.locator(".cf.collective del").count() >= 1
    assert page.locator(".legend").count() == 3
    assert page.locator(".sensitivity svg.chart").count() == 1

    page.screenshot(path=str(artifacts / "analyze.png"))
    page.screenshot(path=str(artifacts / "analyze-full.png"), full_page=True)
    if os.environ.get("LEAF_UPDATE_SCREENSHOT") or not DOCS_SCREENSHOT.exists():
        page.mouse.move(0, 0)  # no hover tooltip in the README's picture
        page.screenshot(path=str(DOCS_SCREENSHOT))


def test_a_new_prompt_is_followed_through_its_job(page: Page, server: Server) -> None:
    """With LEAF_DETECT_WAIT_S=0 a prompt not in the cache answers 202: the page follows the
    job and asks again once it finished."""
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((urlsplit(r.url).path, r.status)))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#example option[value='demo-2']", state="attached")
    page.fill("#instruction", "Eve has 4 cards. Her cat is 3 years old. Eve finds 2 more "
                              "cards. How many cards does Eve have now?")
    page.fill("#output", "4 + 2 = 6. The answer is 6.")
    page.click("#run")
    page.wait_for_selector(".heatmap[data-kind='score'] .tok")
    assert [status for path, status in answers if path == "/detect"] == [202, 200]
    assert any(path.startswith("/jobs/") and status == 200 for path, status in answers)


def test_threshold_slider_reflags_in_the_browser_like_the_server(
        page: Page, server: Server, api: httpx.Client, artifacts: Path) -> None:
    text = analyse(page, server)
    at_default = shown(page)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    press(page, "#tau", "ArrowRight", 25)  # 0.10 -> 0.35, by keyboard
    assert page.text_content("#tau-value") == "0.35"
    wider = shown(page)
    assert wider["flagged"] > at_default["flagged"]
    assert wider["collective"] != at_default["collective"]
    assert_matches(wider, detect(api, text, tau=0.35))
    page.screenshot(path=str(artifacts / "analyze-tau-0.35.png"))

    page.check("#mode-percentile")
    press(page, "#percentile", "ArrowRight", 10)  # 5% -> 10%
    assert page.text_content("#percentile-value") == "10%"
    assert_matches(shown(page), detect(api, text, percentile=10.0))

    page.check("#mode-tau")
    press(page, "#tau", "ArrowLeft", 25)  # back to the server's default
    assert_matches(shown(page), detect(api, text, tau=0.1))
    assert shown(page) == at_default
    assert not [u for u in requests if "/detect" in u], "the slider must not ask the server"


def test_copy_and_download_give_the_record_at_the_current_threshold(
        page: Page, server: Server, api: httpx.Client) -> None:
    text = analyse(page, server)
    press(page, "#tau", "ArrowRight", 20)  # tau 0.30
    with page.expect_download() as download:
        page.click(".download-json")
    saved = json.loads(Path(download.value.path()).read_text())
    server_record = detect(api, text, tau=0.3)
    for key in ("id", "instruction", "output", "tokens", "spans", "pruned", "collective",
                "params"):
        assert saved[key] == server_record[key], key


def test_keyboard_focus_on_a_token_shows_its_numbers(page: Page, server: Server,
                                                      artifacts: Path) -> None:
    analyse(page, server)
    page.evaluate("document.activeElement.blur()")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('tok')"):
            break
    else:
        pytest.fail("no token took keyboard focus within 60 Tab presses")
    tip = page.locator("#token-tip")
    first = page.evaluate("({...document.activeElement.dataset})")
    assert tip.is_visible()
    assert f"score {float(first['score']):.3f}" in tip.inner_text()
    assert f"teacher {float(first['teacher']):.3f}" in tip.inner_text()

    page.keyboard.press("ArrowRight")  # arrows move within the heatmap
    second = page.evaluate("({...document.activeElement.dataset})")
    assert second["i"] != first["i"]
    assert f"score {float(second['score']):.3f}" in tip.inner_text()
    page.screenshot(path=str(artifacts / "token-focus.png"))


# ---------------------------------------------------------------------------- datasets, jobs


def test_upload_detect_job_and_browse_its_records(page: Page, server: Server, api: httpx.Client,
                                                  tmp_path: Path, artifacts: Path) -> None:
    page.goto(f"{server.url}/#/datasets")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json at all\n{"output": "b"}\n')
    page.set_input_files("#dataset-file", str(bad))
    page.click("#upload")
    error = page.locator("#upload-errors .error")
    error.wait_for()
    assert "line 2" in error.inner_text() and "invalid JSON" in error.inner_text()
    assert "not json at all" in page.text_content(".bad-line")
    # Every bad row is listed, so the file can be fixed in one go.
    listed = error.locator("li").all_inner_texts()
    assert len(listed) == 2 and listed[1].startswith("line 3: instruction:"), listed
    assert "Traceback" not in page.content()

    # A job the API refuses shows the API's reason.
    answers_only = tmp_path / "answers.jsonl"
    answers_only.write_text('{"instruction": "1 + 1?", "answer": "2"}\n')
    page.set_input_files("#dataset-file", str(answers_only))
    page.click("#upload")
    page.click("#start-job")
    refused = page.locator(".job-form .error")
    refused.wait_for()
    assert "lack an 'output'" in refused.inner_text()

    page.goto(f"{server.url}/#/datasets")
    page.set_input_files("#dataset-file", str(DEMO))
    page.click("#upload")
    page.wait_for_selector(".job-form")
    dataset_id = page.url.rsplit("/", 1)[-1]
    page.click("#start-job")
    page.wait_for_selector("#job-page")
    page.wait_for_selector("#job-page .badge.status-finished", timeout=JOB_TIMEOUT_MS)
    job_id = page.url.rsplit("/", 1)[-1]
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "finished" and job["dataset_id"] == dataset_id
    assert page.eval_on_selector("#job-page progress", "p => p.value") == 1

    page.wait_for_selector(".records .record")
    assert page.locator(".records .record").count() == 5
    assert page.text_content("#records-range") == "records 1–5 of 12"
    scores = page.eval_on_selector_all(".records .heatmap[data-kind='score'] .tok",
                                       "els => els.map(e => Number(e.dataset.score))")
    assert scores and all(0.0 <= s <= 1.0 for s in scores)
    assert page.locator(".summary svg.chart").count() == 3  # words, histogram, sensitivity
    assert page.locator(".records .sensitivity svg.chart").count() == 1
    # The form left the unit to the server, whose default scores words: the page says so.
    unit = DetectConfig().unit
    assert unit == "word" and job["params"]["unit"] == unit
    counts = dict(zip(page.locator(".summary dl.defs dt").all_inner_texts(),
                      page.locator(".summary dl.defs dd").all_inner_texts(), strict=True))
    assert counts["flagged words"] == str(job["result"]["flagged_tokens"])
    assert all("per word" in u for u in page.locator(".records .units").all_inner_texts())
    assert "flagged words and spans" in page.text_content(".records .sensitivity")
    page.screenshot(path=str(artifacts / "job-detect.png"), full_page=True)

    first_ids = page.eval_on_selector_all(".records .record", "els => els.map(e => e.dataset.id)")
    page.click("#records-next")
    page.wait_for_function("document.querySelector('#records-range').textContent"
                           " === 'records 6–10 of 12'")
    assert page.eval_on_selector_all(".records .record",
                                     "els => els.map(e => e.dataset.id)") != first_ids

    with page.expect_download() as download:
        page.click("#download-pruned")
    assert download.value.suggested_filename == "pruned.jsonl"
    rows = Path(download.value.path()).read_text().splitlines()
    assert len(rows) == job["result"]["pruned_rows"] > 0

    page.click("nav.tabs a[data-tab='jobs']")
    row = page.locator(f"#jobs-table tr[data-id='{job_id}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "finished"
    assert row.locator("progress").evaluate("p => p.value") == 1
    page.screenshot(path=str(artifacts / "jobs.png"))


def _distill_demo(api: httpx.Client, **params: object) -> str:
    """Upload the demo rows and submit a distillation of them; return the job id."""
    with DEMO.open("rb") as handle:
        dataset_id = api.post("/datasets", files={"file": handle}).json()["id"]
    return api.post("/jobs", json={"kind": "distill", "dataset_id": dataset_id,
                                   **params}).json()["id"]


def test_a_distillation_is_followed_to_its_loss_curve_and_its_model(
        page: Page, server: Server, api: httpx.Client, tmp_path: Path) -> None:
    """The job page polls: submitted through the API, watched in the page until it ends.
    Its downloads are the model first and, labelled apart, the state only resuming needs."""
    job_id = _distill_demo(api, epochs=1)
    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.wait_for_selector("#job-page .badge.status-finished", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector(".distill svg.chart")  # the loss curve
    assert page.locator("table.epochs tbody tr").count() == 1
    files = page.eval_on_selector_all(".files li", "ls => ls.map(l => l.dataset.file)")
    assert files[0] == MODEL_ARCHIVE and RESUME_ARCHIVE in files
    assert "checkpoint.tar" not in files
    told = api.get(f"/jobs/{job_id}").json()["result"]["downloads"]  # what each one holds
    model = page.locator(f".files li[data-file='{MODEL_ARCHIVE}']").inner_text()
    assert "Download the model" in model and told[MODEL_ARCHIVE] in model
    assert "tokenizer" in model
    resume = page.locator(f".files li[data-file='{RESUME_ARCHIVE}']").inner_text()
    assert "resume state" in resume and told[RESUME_ARCHIVE] in resume
    assert "resuming only" in resume
    with page.expect_download() as started:
        page.click(f".files button[data-file='{MODEL_ARCHIVE}']")
    download = started.value
    assert download.suggested_filename == MODEL_ARCHIVE
    saved = tmp_path / MODEL_ARCHIVE
    download.save_as(saved)
    assert saved.read_bytes() == api.get(f"/jobs/{job_id}/files/{MODEL_ARCHIVE}").content


def test_a_failed_job_shows_the_workers_reason(page: Page, server: Server,
                                               api: httpx.Client) -> None:
    page.goto(f"{server.url}/#/jobs/{_distill_demo(api, max_length=8)}")
    page.wait_for_selector("#job-page .badge.status-failed", timeout=JOB_TIMEOUT_MS)
    error = page.locator(".job-head .error")
    assert "no training example fits in 8 tokens" in error.inner_text()
    assert "Traceback" not in page.content()
    assert page.locator("#cancel-job").count() == 0  # nothing left to cancel


# ---------------------------------------------------------------------------- corpus report


def _finished_detect(api: httpx.Client, rows_file: Path, **params: object) -> str:
    """Upload a JSONL file, run a detect job over it to the end; return the job id."""
    with rows_file.open("rb") as handle:
        dataset_id = api.post("/datasets", files={"file": handle}).json()["id"]
    job_id = api.post("/jobs", json={"kind": "detect", "dataset_id": dataset_id,
                                     **params}).json()["id"]

    def ended() -> dict[str, Any] | None:
        job = api.get(f"/jobs/{job_id}").json()
        return job if job["status"] in {"finished", "failed", "canceled"} else None

    job = wait_for(ended, timeout=JOB_TIMEOUT_MS / 1000, every=0.2)
    assert job["status"] == "finished", job["error"]
    return job_id


def _cells(page: Page, table: str, column: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{table} tbody tr", f"rows => rows.map(r => r.children[{column}].textContent)")


def test_report_view_shows_the_jobs_report_and_its_slider_asks_nothing(
        page: Page, server: Server, api: httpx.Client, artifacts: Path) -> None:
    job_id = _finished_detect(api, DEMO)
    report = api.get(f"/jobs/{job_id}/report").json()
    seg = report["segments"][0]

    # From the jobs list, as a person would.
    page.goto(f"{server.url}/#/jobs")
    page.click(f"#jobs-table tr[data-id='{job_id}'] a.report-link")
    page.wait_for_selector("#report-patterns")
    assert page.url.endswith(f"#/jobs/{job_id}/report")
    rows = seg["patterns"]["rows"]
    assert page.eval_on_selector_all("#report-patterns tbody tr",
                                     "rs => rs.map(r => r.dataset.pattern)") == [
        r["pattern"] for r in rows]
    assert rows[0]["pattern"] == "<num>"  # drawn as text: markup would have swallowed it
    assert _cells(page, "#report-patterns", 2) == [str(r["count"]) for r in rows]
    assert _cells(page, "#report-patterns", 3) == [str(r["prompts"]) for r in rows]
    assert page.eval_on_selector_all("#report-categories tbody tr",
                                     "rs => rs.map(r => r.dataset.category)") == [
        c["category"] for c in seg["categories"]]
    assert _cells(page, "#report-categories", 1) == [str(c["flags"]) for c in seg["categories"]]
    assert page.text_content("#report-flags") == str(seg["flags"])
    # Scored on words (the default unit), the report counts words and says so.
    assert report["params"]["unit"] == "word"
    assert "flagged words" in page.inner_text("#report-tau-section .tau-figures")
    assert "tokens" not in page.inner_text("#report-overview")
    bins = seg["positions"]["bins"]
    assert page.locator("#report-positions-section rect.bar").count() == 2 * bins
    page.select_option("#pattern-kind", "literal_patterns")
    assert page.eval_on_selector_all("#report-patterns tbody tr",
                                     "rs => rs.map(r => r.dataset.pattern)") == [
        r["pattern"] for r in seg["literal_patterns"]["rows"]]
    page.select_option("#pattern-kind", "patterns")

    page.mouse.move(0, 0)
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    if os.environ.get("LEAF_UPDATE_SCREENSHOT") or not DOCS_REPORT_SCREENSHOT.exists():
        # The README's picture: down to the end of the patterns table (the figures, the tau
        # curve, the top patterns); the full page is in the artifacts.
        box = page.locator("#report-patterns-section").bounding_box()
        assert box is not None
        page.screenshot(path=str(DOCS_REPORT_SCREENSHOT), full_page=True, clip={
            "x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 16})

    # The slider walks the stored curve, point by point, without a request.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    curve = seg["tau_curve"]
    start = page.eval_on_selector("#report-tau", "e => Number(e.value)")
    assert curve[start]["tau"] == pytest.approx(report["params"]["tau"])
    press(page, "#report-tau", "Home", 1)
    for i, point in enumerate(curve):
        if i:
            page.keyboard.press("ArrowRight")
        assert page.text_content("#report-tau-value") == f"{point['tau']:.2f}"
        assert page.text_content("#tau-flags") == str(point["flags"])
        assert page.text_content("#tau-prompts") == str(point["prompts_flagged"])
        assert page.text_content("#tau-per-prompt") == f"{point['flags_per_prompt']:.2f}"
    assert curve[-1]["flags"] > curve[0]["flags"]  # the walk was not over a flat line
    asked = [u for u in requests if "/jobs" in u or "/detect" in u]  # /health polls on
    assert asked == [], "the tau slider must not ask the server"

    # A pattern's example opens its record in Analyze, flags and the example's span marked.
    example = rows[0]["examples"][0]
    page.click("#report-patterns .example-link >> nth=0")
    page.wait_for_selector("#record-source")
    page.wait_for_selector(".heatmap[data-kind='score'] .tok.focus")
    record = api.get(f"/jobs/{job_id}/records", params={"offset": example["line"] - 1,
                                                        "limit": 1}).json()["records"][0]
    assert record["id"] == example["id"]
    assert page.input_value("#instruction") == record["instruction"]
    view = shown(page)
    assert_matches(view, record)  # the job's own flags, at the job's own threshold
    focused = set(page.eval_on_selector_all(".heatmap[data-kind='score'] .tok.focus",
                                            "ts => ts.map(t => Number(t.dataset.i))"))
    wanted = {i for i, t in enumerate(record["tokens"]) if t["text"].strip()
              and t["start"] < example["end"] and example["start"] < t["end"]}
    assert focused == wanted and all(record["tokens"][i]["confounder"] for i in focused)
    page.screenshot(path=str(artifacts / "report-example-in-analyze.png"))
    page.click("#record-source a:text('back to the report')")
    page.wait_for_selector("#report-patterns")

    # From the job's page too; and a narrow window needs no sideways scrolling.
    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.click("#open-report")
    page.wait_for_selector("#report-patterns")
    page.set_viewport_size({"width": 400, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    page.screenshot(path=str(artifacts / "narrow-report.png"), full_page=True)


def test_report_view_draws_record_text_as_text(page: Page, server: Server, api: httpx.Client,
                                               tmp_path: Path) -> None:
    """Record text reaches the page through report.json's patterns and examples: markup in
    it is shown, never run."""
    markup = '<img src=x onerror="window.pwned = 1"><b>bold</b>'
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()[:3]]
    for row in rows:
        row["instruction"] = f"{markup} {row['instruction']}"
    data = tmp_path / "markup.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job_id = _finished_detect(api, data, tau=0.5)  # flags nearly everything, markup too
    page.goto(f"{server.url}/#/jobs/{job_id}/report")
    page.wait_for_selector("#report-patterns")
    assert "onerror" in (page.text_content("#report-patterns") or "")
    assert page.locator("main img, main b").count() == 0
    assert page.evaluate("window.pwned") is None


# ---------------------------------------------------------------------------- layout, auth


def test_narrow_window_renders_without_sideways_scrolling(browser: Browser, server: Server,
                                                          artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 400, "height": 800})
    try:
        narrow = context.new_page()
        analyse(narrow, server)
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 400
        assert narrow.locator(".heatmap[data-kind='score']").is_visible()
        box = narrow.locator(".cf.collective").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 400
        narrow.screenshot(path=str(artifacts / "narrow-analyze.png"), full_page=True)
        narrow.goto(f"{server.url}/#/jobs")
        narrow.wait_for_selector("#jobs-table, .jobs-list .empty")
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 400
        narrow.screenshot(path=str(artifacts / "narrow-jobs.png"), full_page=True)
    finally:
        context.close()


def test_token_is_asked_once_kept_for_the_session_and_sent(page: Page, token_server: Server,
                                                           artifacts: Path) -> None:
    page.goto(f"{token_server.url}/")
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    page.fill("#token-input", "wrong")
    page.click("#token-ok")
    page.wait_for_function("document.querySelector('#token-dialog').open && document"
                           ".querySelector('.token-message').textContent.includes('refused')")
    page.screenshot(path=str(artifacts / "token-dialog.png"))
    page.fill("#token-input", API_TOKEN)
    page.click("#token-ok")
    page.wait_for_selector("#teacher option[value='demo-teacher']", state="attached")
    assert not dialog.is_visible()
    assert page.evaluate("sessionStorage.getItem('leaf-api-token')") == API_TOKEN

    page.reload()  # the same tab keeps the token: no second question
    page.wait_for_selector("#teacher option[value='demo-teacher']", state="attached")
    assert not dialog.is_visible()


# ---------------------------------------------------------------------------- the JS port


THRESHOLDS: list[dict[str, float]] = [{"tau": 0.0}, {"tau": 0.2}, {"tau": 0.45},
                                      {"tau": 1.0}, {"percentile": 10.0}, {"percentile": 40.0}]
COMPARED = ("tokens", "spans", "pruned", "collective", "params", "views")


def test_browser_rederivation_equals_the_server_for_units_levels_and_thresholds(
        page: Page, server: Server, api: httpx.Client) -> None:
    """flags.js and prune.js, run in Chromium on one record per setting, give what the
    server answers for every other threshold: flags, spans, pruned prompts, views."""
    page.goto(f"{server.url}/")
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()]
    cases = [(row, {"unit": unit}) for row in rows[:6] for unit in ("token", "word", "sentence")]
    cases += [(row, {"level": "response", "segments": 2}) for row in rows[:2]]
    cases += [(rows[1], {"level": "response", "segments": 3, "unit": "word"})]
    mismatches = []
    for row, options in cases:
        text = {"instruction": row["instruction"], "output": row["output"], **options}
        base = detect(api, text, tau=0.1)
        wanted = [detect(api, text, **t) for t in THRESHOLDS]
        derived = page.evaluate("""async ([base, thresholds]) => {
            const { applyThreshold } = await import("./flags.js");
            return thresholds.map((t) => JSON.parse(JSON.stringify(applyThreshold(base, {
              mode: "percentile" in t ? "percentile" : "tau", tau: t.tau ?? 0.1,
              percentile: t.percentile ?? 5 }))));
        }""", [base, THRESHOLDS])
        for threshold, got, want in zip(THRESHOLDS, derived, wanted, strict=True):
            for key in COMPARED:
                if got.get(key) != want.get(key):
                    mismatches.append((row["id"], options, threshold, key))
    assert mismatches == []


def _random_case(rng: random.Random) -> dict[str, Any]:
    # Characters where JS and Python disagree unless handled: Python-only whitespace
    # (\x1c, \x85), JS-only whitespace (\ufeff) and an astral character (two UTF-16 units).
    # Closing punctuation (",", ")") pulls the spaces before a cut away; letters and digits
    # beyond ASCII ("é", "٣", "Ⅻ", "½") are words, a combining mark or "_" alone is not.
    alphabet = ["a", "b", "7", ".", "!", " ", " ", "\t", "\n", "\x1c", "\x85", "\xa0",
                "\ufeff", "😀", ",", ")", "é", "٣", "Ⅻ", "½", "\u0301", "_"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
    offsets, at = [], 0
    while at < len(text):
        end = min(len(text), at + rng.randint(1, 4))
        if rng.random() < 0.8:  # some characters belong to no token, like template gaps
            offsets.append((at, end))
        at = end
    flags = [rng.random() < 0.4 for _ in offsets]
    return {"text": text, "offsets": offsets, "flags": flags}


def test_prune_and_units_in_js_equal_the_python_engine(page: Page, server: Server) -> None:
    rng = random.Random(0)
    cases = [_random_case(rng) for _ in range(400)]
    for case in cases:
        text = case["text"]
        tokens = [ContextToken("instruction", s, e) for s, e in case["offsets"]]
        spans = find_spans(text, case["offsets"], case["flags"])
        case["want"] = {
            "spans": [list(s) for s in spans],
            "collective": remove_spans(text, spans),
            "pruned": span_pruned(text, spans),
            "words": unit_ids(tokens, {"instruction": text}, "word").tolist(),
            "sentences": unit_ids(tokens, {"instruction": text}, "sentence").tolist(),
            "is_word": [is_word(text[s:e]) for s, e in case["offsets"]],
        }
    page.goto(f"{server.url}/")
    got = page.evaluate("""async (cases) => {
        const { chars, findSpans, removeSpans } = await import("./prune.js");
        const { isWord, unitIds } = await import("./flags.js");
        return cases.map((c) => {
          const tokens = c.offsets.map(([start, end]) => ({ start, end }));
          const texts = { instruction: chars(c.text) };
          const spans = findSpans(chars(c.text), c.offsets, c.flags);
          return { spans, collective: removeSpans(c.text, spans),
            pruned: spans.map((s) => removeSpans(c.text, [s])),
            words: unitIds(tokens, texts, "word"), sentences: unitIds(tokens, texts, "sentence"),
            is_word: c.offsets.map(([s, e]) => isWord(chars(c.text).slice(s, e))) };
        });
    }""", [{k: v for k, v in c.items() if k != "want"} for c in cases])
    wrong = [(c["text"], c["want"], g) for c, g in zip(cases, got, strict=True) if c["want"] != g]
    assert wrong == []
