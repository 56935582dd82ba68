"""The manual: README.md (the front page) and docs/*.md, mirrored page for page in Chinese (README.zh-CN.md and
docs/zh-CN/*.md). Every page has its counterpart with the same headings; the targets reference names every make
target and every variable of the Makefile, in both languages; every relative link and picture resolves, anchors
included; the front page stays short and leads to the index."""
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

MAKEFILE = (REPO / "Makefile").read_text()
DOCS = REPO / "docs"
ENGLISH = [REPO / "README.md"] + sorted(DOCS.glob("*.md"))
CHINESE_DOCS = DOCS / "zh-CN"
REFERENCES = [DOCS / "reference.md", CHINESE_DOCS / "reference.md"]
# the front page's promised size (issue 24)
FRONT_PAGE_LINES = 150


def chinese_counterpart(page: Path) -> Path:
    return REPO / "README.zh-CN.md" if page == REPO / "README.md" else CHINESE_DOCS / page.name


def all_pages() -> list:
    """Every page of the manual, in both languages, including Chinese pages without an English original."""
    return ENGLISH + [REPO / "README.zh-CN.md"] + sorted(CHINESE_DOCS.glob("*.md"))


def name(page: Path) -> str:
    return str(page.relative_to(REPO))


# ------------------------------------------------------------------ parsing

def make_targets() -> set:
    """The targets `make help` lists (its '##   <target>  ...' lines)."""
    return set(re.findall(r"^## {3}([a-z][a-z-]*)\s", MAKEFILE, re.M))


def make_variables() -> set:
    """The variables a user sets: every `NAME ?= ...` of the Makefile in capitals."""
    return set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", MAKEFILE, re.M))


def without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def code_spans(text: str) -> str:
    """Everything in `code` spans and ``` blocks: where the manual names targets and variables."""
    blocks = re.findall(r"```.*?```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", without_code_blocks(text))
    return "\n".join(blocks + spans)


def named_targets(text: str) -> set:
    code = code_spans(text)
    return {t for t in make_targets() if re.search(rf"(^|\s|`|make ){re.escape(t)}(\s|$|`)", code, re.M)}


def named_variables(text: str) -> set:
    return set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", code_spans(text))) & make_variables()


def headings(text: str) -> list:
    """(level, title) of every heading outside code blocks, in order."""
    return [(len(hashes), title.strip()) for hashes, title in
            re.findall(r"^(#+) (.+)$", without_code_blocks(text), re.M)]


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, link syntax and punctuation dropped (letters of every script,
    digits, '_', '-' and spaces kept), spaces -> '-'."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    seen, result = {}, set()
    for _, title in headings(page.read_text(encoding="utf-8")):
        base = anchor(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(text: str) -> list:
    """Targets of markdown links and pictures, [x](target) and ![x](target), outside code, that are not URLs."""
    text = re.sub(r"`[^`\n]*`", "", without_code_blocks(text))
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


# ------------------------------------------------------------------ the parsing itself

def test_the_makefile_is_parsed():
    assert {"setup", "convert", "baseline", "semi", "report", "demo", "test"} <= make_targets()
    assert {"DATA", "FOLD", "EPOCHS", "LABELED_FRACTION", "FORCE"} <= make_variables()


def test_headings_links_and_anchors_are_parsed():
    text = "# A\n```\n# not a heading [x](nowhere.md)\n```\n## The `make convert` step (B)\n" \
           "see [b](other.md#x), ![p](p.png), <https://e.org>, [web](https://e.org) and `[c](code.md)`\n"
    assert headings(text) == [(1, "A"), (2, "The `make convert` step (B)")]
    assert relative_links(text) == ["other.md#x", "p.png"]
    assert anchor("The `make convert` step (B)") == "the-make-convert-step-b"
    assert anchor("转换（`make convert`）") == "转换make-convert"


def test_the_manual_has_its_pages():
    assert {p.name for p in ENGLISH} >= {"README.md", "index.md", "getting-started.md", "datasets.md", "reference.md",
                                         "method.md", "evaluation.md", "results.md", "distributed.md",
                                         "reliability.md", "development.md"}


@pytest.mark.parametrize("page", all_pages(), ids=name)
def test_no_code_span_crosses_a_line(page):
    """The checks read `code` spans line by line: a span broken over two lines would hide what it names."""
    text = re.sub(r"```.*?```", lambda block: "\n" * block.group().count("\n"), page.read_text(encoding="utf-8"),
                  flags=re.S)  # code blocks blanked, line numbers kept
    lines = text.splitlines()
    odd = [f"{i + 1}: {line[:60]}" for i, line in enumerate(lines) if line.count("`") % 2]
    assert not odd, f"{name(page)}: lines with an unclosed code span: {odd}"


# ------------------------------------------------------------------ (a) the Chinese mirror

@pytest.mark.parametrize("page", ENGLISH, ids=name)
def test_every_page_has_its_chinese_counterpart_with_the_same_headings(page):
    chinese = chinese_counterpart(page)
    assert chinese.is_file(), f"{name(page)} has no Chinese counterpart {name(chinese)}"
    english_text, chinese_text = page.read_text(encoding="utf-8"), chinese.read_text(encoding="utf-8")
    levels = [[level for level, _ in headings(text)] for text in (english_text, chinese_text)]
    assert levels[0] == levels[1], f"{name(page)} and {name(chinese)}: the same sections, in the same order and depth"
    assert len(re.findall(r"[\u4e00-\u9fff]", without_code_blocks(chinese_text))) > 20, f"{name(chinese)} is in Chinese"


def test_every_chinese_page_has_its_english_original():
    originals = {p.name for p in ENGLISH}
    orphans = [name(p) for p in sorted(CHINESE_DOCS.glob("*.md")) if p.name not in originals]
    assert not orphans, f"Chinese pages without an English original: {orphans}"


def test_the_front_pages_link_each_other():
    english, chinese = (REPO / "README.md").read_text(encoding="utf-8"), (REPO / "README.zh-CN.md").read_text("utf-8")
    assert "README.zh-CN.md" in relative_links(english)
    assert "README.md" in relative_links(chinese)


# ------------------------------------------------------------------ (b) the reference

@pytest.mark.parametrize("page", REFERENCES, ids=name)
def test_the_reference_names_every_target_and_variable(page):
    text = page.read_text(encoding="utf-8")
    assert named_targets(text) == make_targets(), f"targets missing: {make_targets() - named_targets(text)}"
    assert named_variables(text) == make_variables(), f"variables missing: {make_variables() - named_variables(text)}"


# ------------------------------------------------------------------ (c) links

@pytest.mark.parametrize("page", all_pages(), ids=name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no such section in {linked.relative_to(REPO)}")
    assert not broken, f"{name(page)}: broken links: {broken}"


# ------------------------------------------------------------------ (d) the front page

def test_the_front_page_is_short_and_leads_to_the_index():
    for front, index in ((REPO / "README.md", "docs/index.md"), (REPO / "README.zh-CN.md", "docs/zh-CN/index.md")):
        text = front.read_text(encoding="utf-8")
        assert len(text.splitlines()) < FRONT_PAGE_LINES, f"{name(front)}: {len(text.splitlines())} lines"
        assert index in relative_links(text), f"{name(front)} links {index}"


def test_the_index_links_every_page():
    for index, pages in ((DOCS / "index.md", sorted(DOCS.glob("*.md"))),
                         (CHINESE_DOCS / "index.md", sorted(CHINESE_DOCS.glob("*.md")))):
        linked = {target.partition("#")[0] for target in relative_links(index.read_text(encoding="utf-8"))}
        missing = [p.name for p in pages if p != index and p.name not in linked]
        assert not missing, f"{name(index)} does not link {missing}"
