"""The timeline report (``tgdfer.apps.report``): one self-contained page that plays the video beside the timeline.

Unit tests read the CSVs back and check what the page embeds; the integration tests open the page in headless
Chromium (Debian's ``chromium`` and ``chromium-driver`` driven by selenium; nothing downloads a browser) on a
generated video whose persons are checkerboards drawn at the CSV's face boxes, so a blurred box is measurable in a
screenshot.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tgdfer.apps import report
from tgdfer.errors import ConfigError
from tgdfer.plots import row_bounds
from tgdfer.testing.synthetic import people_timeline, write_video_pts

CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")


def _embedded(page: Path) -> dict:
    text = page.read_text()
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def _array(b64: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ unit tests


def test_people_csv_is_read_by_person_and_window(tmp_path):
    csv_path, _ = people_timeline(tmp_path, "talk", seconds=90, persons=2)
    rows = report.read_timeline_rows(csv_path, CLASSES)
    raw = _csv(csv_path)
    assert [p.name for p in rows.persons] == ["p1", "p2"]
    assert len(rows.starts) == len(raw) // 2 == 89
    p2 = rows.persons[1]
    for w, r in enumerate(r for r in raw if r["person"] == "p2"):
        assert rows.starts[w] == float(r["start_s"]) and rows.ends[w] == float(r["end_s"])
        assert report.STATUS_CODES[p2.status[w]] == r["status"]
        if r["status"] == "ok":
            assert np.allclose(p2.probs[w], [float(r[c]) for c in CLASSES])
            assert list(p2.boxes[w]) == [float(r[c]) for c in report.BOX_COLUMNS]
            assert CLASSES[p2.top[w]] == r["top"]
        else:
            assert np.isnan(p2.probs[w]).all() and np.isnan(p2.boxes[w]).all() and p2.top[w] == -1


def test_one_face_csv_is_one_person_without_boxes(tmp_path):
    """Today's one-face CSV (no person column), with smoothed columns that are not classes."""
    names = ("happiness", "sadness")
    lines = [
        "start_s,end_s,center_s,status,face_frac,top,margin,happiness,sadness,happiness_mean5,sadness_mean5",
        "0.000,2.000,1.000,ok,1.000,sadness,0.200000,0.400000,0.600000,0.450000,0.550000",
        "1.000,3.000,2.000,no_face,0.250,,,,,,",
        "2.000,3.500,2.750,ok,0.750,happiness,0.500000,0.750000,0.250000,0.600000,0.400000",
        "3.000,3.500,3.250,occluded,0.000,,,,,,",  # a status this report does not know: other (3)
        "3.500,3.5",  # cut short by a crash: left out
    ]
    path = tmp_path / "clip.timeline.csv"
    path.write_text("\n".join(lines))
    rows = report.read_timeline_rows(path)
    assert rows.classes == names
    (p1,) = rows.persons
    assert p1.name == "p1" and p1.boxes is None
    assert list(p1.status) == [0, 1, 0, 3] and list(p1.top) == [1, -1, 0, -1]
    assert np.allclose(p1.face_frac, [1.0, 0.25, 0.75, 0.0])
    assert np.allclose(p1.probs[[0, 2]], [[0.4, 0.6], [0.75, 0.25]]) and np.isnan(p1.probs[[1, 3]]).all()
    page = report.write_report(path)  # no JSON header beside it: the legend lacks the run, the page still works
    assert page == tmp_path / "clip.report.html"
    data = _embedded(page)
    assert data["persons"][0]["boxes"] is None and data["video"]["src"] is None and data["run"] is None


def test_page_embeds_the_rows_compactly_and_refers_to_nothing_online(tmp_path):
    csv_path, json_path = people_timeline(tmp_path / "out", "talk", seconds=60, persons=2)
    video = tmp_path / "videos" / "talk 1#.webm"
    video.parent.mkdir()
    video.write_bytes(b"not decoded here")
    page = report.write_report(csv_path, json_path, video)
    text = page.read_text()
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", re.sub(r"<script type=\"application/json\".*?</script>", "", text))
    data = _embedded(page)
    assert data["video"]["src"] == "../videos/talk%201%23.webm"  # relative to the page, as a URL
    assert data["classes"] == list(CLASSES) and data["window_s"] == 2.0 and data["stride_s"] == 1.0
    rows = report.read_timeline_rows(csv_path, CLASSES)
    bounds = _array(data["bounds_ms"], "<i4")
    assert np.array_equal(bounds, np.round(row_bounds(rows.starts, rows.ends) * 1000))
    for person, sent in zip(rows.persons, data["persons"], strict=True):
        probs = _array(sent["probs"], "<u2").reshape(-1, len(CLASSES))
        ok = person.status == 0
        assert np.array_equal(probs[~ok], np.full_like(probs[~ok], report.MISSING_U16))
        assert np.abs(probs[ok] / 1000 - person.probs[ok]).max() <= 0.0005  # 3 decimals
        boxes = _array(sent["boxes"], "<i2").reshape(-1, 4)
        assert np.array_equal(boxes[ok], person.boxes[ok]) and (boxes[~ok] == report.MISSING_BOX).all()
        assert sent["summary"]["id"] == person.name and sent["summary"]["screen_time_s"] > 0


def test_an_hour_with_two_persons_stays_small(tmp_path):
    csv_path, json_path = people_timeline(tmp_path, "hour", seconds=3600, persons=2)  # the default 1 s stride
    page = report.write_report(csv_path, json_path)
    assert page.stat().st_size < 400_000  # measured 333 KB; the CSV is 863 KB


def test_embedded_video_and_its_limit(tmp_path, monkeypatch):
    csv_path, json_path = people_timeline(tmp_path, "talk", seconds=10)
    video = tmp_path / "talk.webm"
    video.write_bytes(b"\x1a\x45\xdf\xa3 webm bytes")
    page = report.write_report(csv_path, json_path, video, embed_video=True)
    src = _embedded(page)["video"]["src"]
    assert src.startswith("data:video/webm;base64,") and base64.b64decode(src.split(",", 1)[1]) == video.read_bytes()
    monkeypatch.setattr(report, "EMBED_LIMIT_BYTES", 8)
    with pytest.raises(
        ConfigError, match=r"--embed-video: expected a video file of at most 0 MB .* found .*talk\.webm"
    ):
        report.write_report(csv_path, json_path, video, embed_video=True)


def test_a_csv_that_is_not_a_timeline_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"expected a timeline CSV .* found columns \['a', 'b'\]"):
        report.read_timeline_rows(path)
    csv_path, _ = people_timeline(tmp_path, "talk", seconds=10)
    with pytest.raises(ConfigError, match=r"expected the timeline's JSON header at .*elsewhere.json, found no such"):
        report.write_report(csv_path, tmp_path / "elsewhere.json")


# ------------------------------------------------------------------------------------------- in a browser


def _checker_video(csv_path: Path, path: Path, codec: str, seconds: float, size=(320, 180), fps=5) -> Path:
    """Each person's face box (the nearest window centre's, from the CSV) filled with an 8-pixel checkerboard on a
    flat grey frame, so a box's content has strong edges and blurring it is measurable."""
    rows = report.read_timeline_rows(csv_path, CLASSES)
    bounds = row_bounds(rows.starts, rows.ends)
    yy, xx = np.mgrid[: size[1], : size[0]]
    checker = (((yy // 8) + (xx // 8)) % 2 * 255).astype(np.uint8)

    def frames():
        for i in range(round(seconds * fps)):
            frame = np.full((size[1], size[0], 3), 128, np.uint8)
            w = min(int(np.searchsorted(bounds, i / fps, side="right")) - 1, len(rows.starts) - 1)
            for person in rows.persons:
                if not np.isnan(person.boxes[w, 0]):
                    x0, y0, x1, y1 = person.boxes[w].astype(int)
                    frame[y0:y1, x0:x1] = checker[y0:y1, x0:x1, None]
            yield frame

    return write_video_pts(path, frames(), (round(i * 1000 / fps) for i in range(round(seconds * fps))), codec)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium/chromedriver missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))  # the system's driver: nothing downloaded


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _wait(browser, script: str, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _readouts(browser) -> dict[str, dict]:
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.readout')].map(r => [r.dataset.person, "
        "{t: +r.dataset.t, row: +r.dataset.row, status: r.dataset.status, start: r.dataset.start, "
        "values: Object.fromEntries([...r.querySelectorAll('.prob')].map(s => [s.dataset.class, s.dataset.value]))}]))"
    )


def _seek(browser, t: float) -> None:
    browser.execute_script(f"document.getElementById('video').currentTime = {t}")
    done = (
        "const v = document.getElementById('video'), r = document.querySelector('.readout'); return !v.seeking && "
        f"v.readyState >= 2 && Math.abs(v.currentTime - {t}) < 1e-3 && Math.abs(r.dataset.t - {t}) < 1e-3"
    )
    _wait(browser, done, f"the seek to {t} s")


def _contrast(png: bytes, box: list[float]) -> float:
    """Standard deviation of the screenshot's grey levels in the middle half of a css-pixel box."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    _, x, y, w, h = box
    crop = image[round(y + h / 4) : round(y + 3 * h / 4), round(x + w / 4) : round(x + 3 * w / 4)]
    return float(crop.std())


def _expected(csv_path: Path, t: float) -> dict[str, dict]:
    """The CSV row of each person whose stretch of time (``row_bounds``) holds t."""
    rows = _csv(csv_path)
    starts = sorted({float(r["start_s"]) for r in rows})
    ends = sorted({float(r["end_s"]) for r in rows})
    w = int(np.searchsorted(row_bounds(np.array(starts), np.array(ends)), t, side="right")) - 1
    return {r["person"]: r for r in rows if float(r["start_s"]) == starts[w]}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("codec", "suffix", "mime"),
    [("libvpx", "webm", 'video/webm; codecs="vp8"'), ("libx264", "mp4", 'video/mp4; codecs="avc1.42E01E"')],
)
def test_report_in_chromium_seeks_reads_back_and_blurs(tmp_path, browser, codec, suffix, mime):
    if not browser.execute_script("return document.createElement('video').canPlayType(arguments[0])", mime):
        pytest.skip(f"this chromium cannot play {mime}")
    csv_path, json_path = people_timeline(tmp_path, "talk", seconds=20, persons=2, size=(320, 180))
    video = _checker_video(csv_path, tmp_path / f"talk.{suffix}", codec, seconds=20)
    page = report.write_report(csv_path, json_path, video)
    browser.get_log("browser")  # what an earlier page logged
    browser.get(page.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === 'yes' && document.getElementById('video').readyState >= 2",
          "the page and its video")  # fmt: skip

    t = 5.3  # row 4 (window 4-6 s, centre 5 s): p2 is there, p1 away (no_face) until 9 s
    _seek(browser, t)
    shown, expected = _readouts(browser), _expected(csv_path, t)
    assert set(shown) == {"p1", "p2"}
    for person, row in expected.items():
        assert shown[person]["status"] == row["status"] and float(shown[person]["start"]) == float(row["start_s"])
        for c in CLASSES:
            want = "" if row[c] == "" else f"{float(row[c]):.3f}"
            assert shown[person]["values"][c] == want, (person, c)
    assert {r["status"] for r in expected.values()} == {"ok", "no_face"}  # both kinds of row are checked
    geometry = browser.execute_script(
        "const s = document.getElementById('people').dataset, c = document.getElementById('cursor-2'); "
        "return [+s.t0, +s.t1, parseFloat(c.style.left), document.getElementById('chart-2').clientWidth, c.hidden]"
    )
    t0, t1, left, width, hidden = geometry
    assert not hidden and left == pytest.approx((t - t0) / (t1 - t0) * width, abs=0.01)
    strip = (  # the top-class strip's pixel under the cursor: the row's top class, or the no-face grey
        "const c = document.querySelector(`#chart-${arguments[0]} canvas`), x = Math.floor(arguments[1] * c.width); "
        "return [...c.getContext('2d').getImageData(x, c.height - 6, 1, 1).data.slice(0, 3)]"
    )
    tab10 = ["1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2"]
    for index, person in ((1, "p1"), (2, "p2")):
        row = expected[person]
        colour = "d9d9d9" if row["status"] != "ok" else tab10[CLASSES.index(row["top"])]
        assert browser.execute_script(strip, index, (t - t0) / (t1 - t0)) == list(bytes.fromhex(colour)), person

    boxes = json.loads(browser.execute_script("return document.getElementById('overlay').dataset.boxes"))
    assert [b[0] for b in boxes] == ["p2"]  # p1 is away
    stage = browser.execute_script(
        "const r = document.getElementById('overlay').getBoundingClientRect(); return [r.x, r.y]"
    )
    box = [boxes[0][0], boxes[0][1] + stage[0], boxes[0][2] + stage[1], boxes[0][3], boxes[0][4]]
    sharp = _contrast(browser.get_screenshot_as_png(), box)
    browser.find_element("id", "blur").click()
    assert browser.execute_script("return document.body.dataset.blur") == "on"
    blurred = _contrast(browser.get_screenshot_as_png(), box)
    assert sharp > 60 and blurred < sharp / 4, (sharp, blurred)  # the box is on the checkerboard, then blurred

    chart = browser.find_element("id", "chart-1")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).move_to_element_with_offset(chart, round(width * 0.8 - width / 2), 0).click().perform()
    target = t0 + 0.8 * (t1 - t0)
    moved = f"const v = document.getElementById('video'); return !v.seeking && Math.abs(v.currentTime - {target}) < 0.1"
    _wait(browser, moved, "the click to seek the video")
    row = _readouts(browser)["p1"]["row"]
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()  # the next window's centre
    _wait(browser, f"return +document.querySelector('.readout').dataset.row === {row + 1}", "the key to step a window")
    before = _readouts(browser)["p1"]["t"]
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play()")
    _wait(browser, f"return +document.querySelector('.readout').dataset.t > {before} + 0.5", "playback to move on")
    browser.execute_script("document.getElementById('video').pause()")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


@pytest.mark.integration
def test_report_without_its_video_says_so_and_still_works(tmp_path, browser):
    csv_path, json_path = people_timeline(tmp_path, "talk", seconds=30)
    page = report.write_report(csv_path, json_path, tmp_path / "moved-away.webm")
    browser.get_log("browser")
    browser.get(page.resolve().as_uri())
    note = _wait(
        browser, "const n = document.getElementById('video-note'); return !n.hidden && n.textContent", "a note"
    )
    assert note.startswith("The video cannot be played: moved-away.webm. Put it at that path relative to this page")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(browser.find_element("id", "chart-2")).click().perform()  # the middle
    shown, expected = _readouts(browser)["p2"], _expected(csv_path, 15.0)["p2"]
    assert shown["t"] == pytest.approx(15.0, abs=0.1) and shown["status"] == expected["status"]
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 1 and "moved-away.webm - Failed to load resource: net::ERR_FILE_NOT_FOUND" in errors[0]


@pytest.mark.integration
def test_report_with_the_video_embedded_plays_it(tmp_path, browser):
    csv_path, json_path = people_timeline(tmp_path, "talk", seconds=4, size=(320, 180))
    video = _checker_video(csv_path, tmp_path / "talk.mp4", "libx264", seconds=4)
    page = report.write_report(csv_path, json_path, video, tmp_path / "shared" / "talk.report.html", embed_video=True)
    video.unlink()  # the page alone
    browser.get(page.resolve().as_uri())
    size = _wait(browser, "const v = document.getElementById('video'); return v.readyState >= 2 && [v.videoWidth, "
                 "v.videoHeight]", "the embedded video")  # fmt: skip
    assert size == [320, 180]
