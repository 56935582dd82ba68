"""README.md is the user's manual and README.zh-CN.md says the same in Chinese: both name every make target and
every variable of the Makefile, so that neither can drift from the Makefile or from the other."""
import re

import pytest

from tests.helpers import REPO

MAKEFILE = (REPO / "Makefile").read_text()
READMES = {"en": REPO / "README.md", "zh-CN": REPO / "README.zh-CN.md"}


def make_targets() -> set:
    """The targets `make help` lists (its '##   <target>  ...' lines)."""
    return set(re.findall(r"^## {3}([a-z][a-z-]*)\s", MAKEFILE, re.M))


def make_variables() -> set:
    """The variables a user sets: every `NAME ?= ...` of the Makefile in capitals."""
    return set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", MAKEFILE, re.M))


def code_spans(text: str) -> str:
    """Everything in `code` spans and ``` blocks: where the manual names targets and variables."""
    blocks = re.findall(r"```.*?```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def named_targets(text: str) -> set:
    code = code_spans(text)
    return {t for t in make_targets() if re.search(rf"(^|\s|`|make ){re.escape(t)}(\s|$|`)", code, re.M)}


def named_variables(text: str) -> set:
    return set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", code_spans(text))) & make_variables()


def test_the_makefile_is_parsed():
    assert {"setup", "convert", "baseline", "semi", "report", "demo", "test"} <= make_targets()
    assert {"DATA", "FOLD", "EPOCHS", "LABELED_FRACTION", "FORCE"} <= make_variables()


@pytest.mark.parametrize("language", READMES)
def test_the_manual_names_every_target_and_variable(language):
    text = READMES[language].read_text(encoding="utf-8")
    assert named_targets(text) == make_targets(), f"targets missing: {make_targets() - named_targets(text)}"
    assert named_variables(text) == make_variables(), f"variables missing: {make_variables() - named_variables(text)}"


def test_both_manuals_have_the_same_sections_and_link_each_other():
    english, chinese = (READMES[k].read_text(encoding="utf-8") for k in ("en", "zh-CN"))
    headings = [re.findall(r"^(#+) ", re.sub(r"```.*?```", "", text, flags=re.S), re.M) for text in (english, chinese)]
    assert headings[0] == headings[1], "the same sections, in the same order and depth"
    assert "README.zh-CN.md" in english and "README.md" in chinese
    assert re.search(r"[\u4e00-\u9fff]", chinese), "the Chinese manual is in Chinese"
