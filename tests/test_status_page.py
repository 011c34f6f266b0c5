"""The status page alone: a pure function of the /status.json document, no server, no clock."""

from __future__ import annotations

import copy
import re
import time
from html.parser import HTMLParser

import pytest

import cdn_push as page
import sample_status
from sample_status import HOSTILE, NEWLINE_ANSI

ESCAPED_HOSTILE = "&lt;img src=x onerror=alert(1)&gt;.mp4"
VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "embed", "source", "track", "wbr"}
SVG_EMPTY = {"line", "rect", "path", "circle"}          # written as <x .../>, reported as start+end


class Structure(HTMLParser):
    """Every element, attribute and text run of a page, and whether the tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.texts: list[tuple[str, str]] = []         # (element directly around it, text), in order

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.texts.append((self.stack[-1] if self.stack else "", data))


def parse(text: str) -> Structure:
    parser = Structure()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == [], (parser.errors, parser.stack)
    return parser


def visible_text(text: str) -> str:
    """The page as text, roughly as a reader sees it (tags gone, entities decoded)."""
    parsed = parse(text)
    joined = "".join(data for parent, data in parsed.texts if parent not in ("style", "title"))
    return re.sub(r"\s+", " ", joined)


def hostile_everywhere() -> dict:
    """The busy sample with every string a file name, path, reason or message can reach made hostile."""
    status = sample_status.busy()
    evil = HOSTILE + ' "quoted" \'single\' & amp'
    status["folder"] = "/srv/" + evil
    status["cdn"] = "https://cp.example.net/" + evil
    status["version"] = evil
    for key in ("hashing", "sending"):
        status["now"][key] = [{"path": evil, "size": 1}, {"path": NEWLINE_ANSI, "size": 2}]
    for item in status["recent"]:
        item.update(path=evil, name="site/" + evil)
    status["recent"][0]["state"] = evil                 # even a state the page does not know
    for problem in status["problems"]:
        problem.update(path=evil, reason=evil + " " + NEWLINE_ANSI)
    status["problems"][0]["state"] = evil
    status["problems"][1]["advice"] = evil
    return status


# -- escaping -----------------------------------------------------------------------------------

def test_hostile_names_show_as_text_everywhere():
    text = page.render_status_page(hostile_everywhere())
    assert HOSTILE not in text and "<img" not in text
    parsed = parse(text)
    tags = {tag for tag, _ in parsed.tags}
    assert tags.isdisjoint({"img", "script", "iframe", "object", "embed", "a\x00"})
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert not any("javascript:" in (value or "") for value in attrs.values()), (tag, attrs)
    shown = visible_text(text)
    # Every place a hostile string reaches: header, now lists, table, problems (path, reason, advice).
    assert shown.count(HOSTILE) >= 2 + 4 + 50 + 5 + 5 + 1
    assert "/srv/" + HOSTILE + ' "quoted" \'single\' & amp' in shown


def test_quotes_are_escaped_so_attributes_cannot_be_broken_out_of():
    text = page.render_status_page(hostile_everywhere())
    assert "&quot;quoted&quot;" in text and "&#x27;single&#x27;" in text and "&amp; amp" in text
    assert '"quoted"' not in text.split("<style>")[0] + text.split("</style>")[1]


def test_control_characters_and_ansi_escapes_are_shown_not_sent():
    text = page.render_status_page(hostile_everywhere())
    assert "\x1b" not in text
    assert NEWLINE_ANSI not in text
    assert "line one\\nline two \\x1b[31mred\\x1b[0m.mp4" in visible_text(text)


def test_svg_titles_are_escaped_text_and_the_page_parses_cleanly():
    text = page.render_status_page(hostile_everywhere())
    svg = text[text.index("<svg"):text.index("</svg>") + 6]
    titles = re.findall(r"<title[^>]*>(.*?)</title>", svg, re.S)
    assert len(titles) == 1 + 60
    assert all("<" not in title and ">" not in title for title in titles)
    parse(text)


def test_esc_escapes_everything_html_needs():
    assert page.esc("<a href='x'>\"&\"</a>") == "&lt;a href=&#x27;x&#x27;&gt;&quot;&amp;&quot;&lt;/a&gt;"
    assert page.esc("tab\there\u202edir") == "tab\\there\\u202edir"     # bidi override shown, not obeyed


def test_no_script_no_external_assets_and_a_csp():
    text = page.render_status_page(sample_status.busy())
    assert "<script" not in text.lower()
    parsed = parse(text)
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = attrs.get(name) or ""
            assert not re.match(r"(?i)\s*(https?:|//|javascript:)", value), (tag, name, value)
    csp = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "script" not in csp[0]


# -- refreshing -----------------------------------------------------------------------------------

def test_the_page_refreshes_itself_without_javascript():
    assert '<meta http-equiv="refresh" content="5">' in page.render_status_page(sample_status.empty())
    assert 'content="30"' in page.render_status_page(sample_status.empty(), refresh_seconds=30)
    assert 'http-equiv="refresh"' not in page.render_status_page(sample_status.empty(), refresh_seconds=0)
    assert page.render_status_page(sample_status.empty()).startswith("<!DOCTYPE html>")


# -- the chart --------------------------------------------------------------------------------------

def buckets(text: str) -> list[str]:
    return re.findall(r'<g class="bucket">.*?</g>', text, re.S)


def test_the_chart_has_60_buckets_axis_labels_and_a_legend(local_tz):
    status = sample_status.busy()
    text = page.render_status_page(status)
    found = buckets(text)
    assert len(found) == 60
    first = time.strftime("%H:%M", time.localtime(status["chart"]["minute_starts"][0]))
    assert f"<title>{first}: {status['chart']['imports'][0]} imports" in found[0]
    last_imports, last_confirms = status["chart"]["imports"][-1], status["chart"]["confirmations"][-1]
    assert f"{last_imports} imports, {last_confirms} confirmation" in found[-1]
    svg = text[text.index("<svg"):text.index("</svg>")]
    assert ">now</text>" in svg and f">{first}</text>" in svg
    assert "Imports sent" in svg and "Confirmed by the CDN" in svg
    assert 'role="img"' in svg and "<desc" in svg
    tallest = max(max(status["chart"]["imports"]), max(status["chart"]["confirmations"]))
    y_labels = [int(v.replace(",", "")) for v in re.findall(r'text-anchor="end">([\d,]+)</text>', svg)]
    assert y_labels[0] == 0 and y_labels[-1] >= tallest and len(y_labels) <= 6


@pytest.mark.parametrize("length", [0, 1, 10, 59, 60, 61, 200])
def test_the_chart_always_spans_an_hour(length):
    now = sample_status.NOW
    chart = {"minute_starts": [now - 60 * (length - i) for i in range(length)],
             "imports": [i % 7 for i in range(length)], "confirmations": [i % 5 for i in range(length)]}
    series = page.chart_series(chart, now)
    assert len(series) == 60
    assert [start for start, _, _ in series] == sorted(start for start, _, _ in series)
    assert all(b - a == 60 for (a, _, _), (b, _, _) in zip(series, series[1:]))
    if length:
        assert series[-1][1:] == (chart["imports"][-1], chart["confirmations"][-1])
    status = {**sample_status.empty(), "chart": chart}
    assert len(buckets(page.render_status_page(status))) == 60


def test_the_chart_scale_is_round_and_holds_the_peak():
    for peak in (0, 1, 3, 4, 5, 9, 13, 99, 101, 1234, 98765):
        top, step = page._nice_ceiling(peak)
        assert top >= peak and top % step == 0 and top // step <= 5
        assert re.fullmatch(r"[125]0*", str(step)), step


def test_one_import_still_shows_a_visible_bar():
    status = sample_status.empty()
    status["chart"]["imports"][-1] = 1
    status["chart"]["imports"][0] = 5000
    last = buckets(page.render_status_page(status))[-1]
    height = float(re.search(r'class="imports"[^>]*height="([\d.]+)"', last).group(1))
    assert height >= 1.5


# -- empty and busy states read well -------------------------------------------------------------

def test_a_fresh_service_with_nothing_imported_reads_well():
    text = page.render_status_page(sample_status.empty())
    shown = visible_text(text)
    assert "Watching the folder" in shown
    assert "No imports yet. Files dropped into /srv/drop appear here" in shown
    assert "No problems" in shown and "need attention" not in shown
    assert "Nothing is being hashed." in shown and "Nothing is being sent." in shown
    assert "No imports in the last hour" in shown
    assert "None" not in shown and "nan" not in shown.lower() and "\u2014" not in shown.split("Folder")[0]
    for label in ("Pending", "Submitted", "Confirmed", "Rejected", "Failed", "Waiting"):
        assert re.search(rf'<div class="label">{label}</div><div class="count">0</div>', text), label


def test_an_empty_or_older_document_still_renders():
    for status in ({}, {"generated_at": sample_status.NOW}, {"counts": None, "recent": "x", "chart": {}},
                   {"activity": {"cdn": None, "pass": None}, "now": {"hashing": None}}):
        shown = visible_text(page.render_status_page(status))
        assert "Latest imports" in shown and "None" not in shown


def test_the_first_pass_says_how_far_it_got(local_tz):
    shown = visible_text(page.render_status_page(sample_status.busy()))
    assert "First pass over the folder" in shown
    assert "12,840 files (1.23 TB) hashed so far; started 2024-06-01 08:57:55 (3.0 h ago)" in shown
    assert "3 files need attention" not in shown and "5 files need attention" in shown


def test_cdn_unreachable_says_since_when_and_when_it_tries_again(local_tz):
    shown = visible_text(page.render_status_page(sample_status.down()))
    assert "The CDN cannot be reached" in shown
    assert "Unreachable since 2024-06-01 11:47:26 (13 min ago). Next try at 2024-06-01 12:00:46 (in 46 s)." in shown
    assert "<title>The CDN cannot be reached" in page.render_status_page(sample_status.down())


def test_refused_credentials_say_what_to_fix():
    status = sample_status.down()
    status["activity"]["cdn"].update(problem="credentials refused", next_try_at=None)
    shown = visible_text(page.render_status_page(status))
    assert "The CDN refused the API credentials" in shown and "api.login" in shown and "Next try" not in shown


@pytest.mark.parametrize("doing, headline", [("full pass", "Checking the whole folder again"),
                                             ("idle", "Idle"), ("watching", "Watching the folder")])
def test_each_activity_has_a_plain_headline(doing, headline):
    status = sample_status.empty()
    status["activity"]["doing"] = doing
    status["activity"]["pass"]["running"] = doing == "full pass"
    assert f'<p class="headline">{headline}</p>' in page.render_status_page(status)


def test_a_finished_one_shot_run_says_so():
    status = {**sample_status.empty(), "mode": "run"}
    status["activity"]["doing"] = "idle"
    text = page.render_status_page(status)
    assert '<p class="headline">Run finished</p>' in text and "one-shot run" in text


# -- numbers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, shown", [
    (0, "0 B"), (999, "999 B"), (1000, "1 KB"), (1536, "1.54 KB"), (999_499, "999 KB"), (999_999, "1 MB"),
    (1_234_567_890, "1.23 GB"), (48_300_000_000, "48.3 GB"), (123_456_789_012, "123 GB"),
    (1_234_567_890_123, "1.23 TB"), (5 * 10**18, "5 EB"), (10**21, "1000 EB"),
    (None, "\u2014"), (-1, "\u2014"), (float("nan"), "\u2014"), ("12", "\u2014"), (True, "\u2014"),
])
def test_human_bytes(size, shown):
    assert page.human_bytes(size) == shown


@pytest.mark.parametrize("count, exact, big", [
    (0, "0", "0"), (7, "7", "7"), (1234, "1,234", "1,234"), (999_999, "999,999", "999,999"),
    (1_234_567, "1,234,567", "1.23 million"), (12_345_678_901, "12,345,678,901", "12.3 billion"),
    (3 * 10**12, "3,000,000,000,000", "3 trillion"), (None, "\u2014", "\u2014"),
])
def test_counts_exact_in_text_and_short_on_tiles(count, exact, big):
    assert page.human_count(count) == exact
    assert page.big_count(count) == big


def test_big_numbers_on_tiles_keep_the_exact_value_in_a_tooltip():
    status = sample_status.busy()
    status["counts"]["confirmed"] = 12_345_678
    status["bytes"]["confirmed"] = 9_876_543_210_987_654
    text = page.render_status_page(status)
    assert re.search(r'title="12,345,678 files confirmed"><div class="label">Confirmed</div>'
                     r'<div class="count">12.3 million</div><div class="bytes">9.88 PB</div>', text)
    assert ">1,532<" in text                                   # under a million: exact


def test_rates_and_queues():
    shown = visible_text(page.render_status_page(sample_status.busy()))
    assert "Hashing speed 412 MB/s" in shown and "Imports sent 7.4 per minute (average of the last 5 minutes)" in shown
    assert "Queued to hash 1,420" in shown and "Awaiting CDN confirmation 87" in shown
    assert "archive/2019/full concert (4K).mov 48.3 GB" in shown


def test_long_lists_of_files_being_worked_on_are_cut_short():
    status = sample_status.busy()
    status["now"]["hashing"] = [{"path": f"f{i}.mp4", "size": i} for i in range(30)]
    shown = visible_text(page.render_status_page(status))
    assert "f7.mp4" in shown and "f8.mp4" not in shown and "and 22 more" in shown


# -- times ------------------------------------------------------------------------------------------

@pytest.fixture
def local_tz(monkeypatch):
    """The samples' expected times are Europe/Berlin; restore the process's zone afterwards."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("zone, shown", [("UTC", "2024-06-01 10:00:00"), ("Asia/Kolkata", "2024-06-01 15:30:00"),
                                         ("America/New_York", "2024-06-01 06:00:00")])
def test_times_are_local_in_one_format(monkeypatch, zone, shown):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert page.local_time(sample_status.NOW) == shown
        assert page.local_time(None) == page.local_time(0) == "\u2014"
        assert f"page generated {shown}" in page.render_status_page(sample_status.empty())
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("offset, shown", [(0, "just now"), (-45, "45 s ago"), (-600, "10 min ago"),
                                           (46, "in 46 s"), (-3 * 3600, "3.0 h ago"), (-3 * 86400, "3.0 days ago")])
def test_relative_times(offset, shown):
    assert page.relative(sample_status.NOW + offset, sample_status.NOW) == shown


# -- recent imports and problems ------------------------------------------------------------------

def test_recent_imports_table_shows_50_with_time_size_name_and_a_worded_badge(local_tz):
    status = sample_status.busy()
    status["recent"] = status["recent"] * 2                 # 100 given, 50 shown
    text = page.render_status_page(status)
    table = text[text.index("<table"):text.index("</table>")]
    rows = re.findall(r"<tr><td.*?</tr>", table, re.S)
    assert len(rows) == 50
    assert ('<td class="when">2024-06-01 11:59:53</td><td class="num size">17 MB</td>'
            '<td class="name">news/2024-06-01 evening bulletin.mp4') in rows[0]
    assert 'in the CDN as site/news/2024-06-01 evening bulletin.mp4' in rows[0]
    for row, item in zip(rows, status["recent"]):
        state = item["state"]
        assert re.search(rf'<span class="badge b-{state}"><span aria-hidden="true">.</span> {state}</span>', row)


def test_every_state_badge_has_its_word_and_an_icon():
    for state in ("pending", "submitted", "confirmed", "rejected", "failed", "waiting", "conflict", "unreadable"):
        shown = page.badge(state)
        assert f"b-{state}" in shown and shown.endswith(f" {state}</span>") and 'aria-hidden="true"' in shown
    assert "b-other" in page.badge("something new") and "something new" in page.badge("something new")


def test_problems_list_the_reason_and_what_to_do():
    text = page.render_status_page(sample_status.busy())
    section = text[text.index('id="problems"'):text.index("</section>", text.index('id="problems"'))]
    items = re.findall(r"<li>.*?</li>", section, re.S)
    assert len(items) == 5
    assert "invalid name" in items[0] and "--retry-rejected" in items[0] and "rejected" in items[0]
    assert "&lt;b&gt;unsupported&lt;/b&gt; codec &amp; container" in items[1]
    assert "wrong file size" in items[2] and "origin.base_url" in items[2]
    assert "rename it" in items[3] and "conflict" in items[3]
    assert "permissions" in items[4] and "unreadable" in items[4]


def test_problems_beyond_200_are_counted_not_listed():
    status = sample_status.busy()
    status["problems"] = [{"path": f"p{i}.mp4", "state": "failed", "reason": "x", "time": 1.0} for i in range(250)]
    text = page.render_status_page(status)
    assert text.count('<p class="advice">') == 200 and "and 50 more" in text
    assert "250 files need attention" in text


@pytest.mark.parametrize("state, reason, words", [
    ("rejected", "HTTP 400: invalid name", ["fix what the cdn says", "--retry-rejected"]),
    ("failed", "callback status=fail: something", ["could not fetch or verify", "origin"]),
    ("failed", "wrong file size", ["origin.base_url"]),
    ("failed", "404 error", ["origin.base_url"]),
    ("failed", "sha-256 mismatch", ["different bytes"]),
    ("conflict", "", ["no_replace", "rename it"]),
    ("rejected", "HTTP 409: file already exists and no_replace is set", ["rename it"]),
    ("unreadable", "Permission denied", ["permissions"]),
    ("something new", "", ["log"]),
])
def test_advice_per_problem(state, reason, words):
    advice = page.render_problems_advice(state, reason).lower()
    for word in words:
        assert word.lower() in advice


# -- house rules for pasting into cdn_push.py -----------------------------------------------------




def test_rendering_is_pure_and_deterministic():
    status = sample_status.busy()
    before = copy.deepcopy(status)
    assert page.render_status_page(status) == page.render_status_page(status)
    assert status == before


@pytest.mark.parametrize("reason, advice", [
    ("name is not valid UTF-8; rename the file to import it", "Rename the file"),
    ("the same file as the ledger ('ledger'), which holds cdn-push's own secrets", "remove it"),
    ("a sparse file: 1,000 bytes long but only 0 bytes on disk; skipped", "scan.allow_sparse"),
    ("5,000 bytes is over scan.max_size (1,000 bytes); skipped", "raise it"),
    ("cannot stat: Permission denied", "permissions"),
])
def test_a_skipped_file_gets_advice_that_fits_its_reason(reason, advice):
    """A non-UTF-8 name was told to "check permissions"; each reason for a skip has its own advice."""
    assert advice in page.render_problems_advice("unreadable", reason)
