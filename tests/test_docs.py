"""The documentation is what the code says: the methods page's reference section is generated from each method's
docstring (rule and departures, written once in the method's file), and the README stays a front door (≤ 250
lines) whose links to the docs resolve. (``mkdocs build --strict``, run by ``.ci/run``, checks the site itself.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from drl_tune.methods import REGISTRY
from drl_tune.methods.docs_reference import END, START, markdown

ROOT = Path(__file__).resolve().parent.parent


def test_the_methods_reference_is_generated_from_the_method_files():
    page = (ROOT / "docs" / "methods.md").read_text()
    assert markdown() in page, "docs/methods.md is stale: paste python -m drl_tune.methods.docs_reference"
    section = page[page.index(START): page.index(END)]
    assert [f"### `{name}`" for name in REGISTRY] == re.findall(r"^### `\w+`", section, flags=re.M)
    assert "theta_grad" in section and "Departures from the official code" in section


def test_readme_is_short_and_its_doc_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = {next(iter(item.values())) for item in config["nav"]}
    assert nav == {p.name for p in (ROOT / "docs").glob("*.md")}


def repeated_runs(text: str, words: int = 14) -> list[str]:
    """Runs of ``words`` consecutive words that occur twice in ``text``'s prose (code blocks and tables left out):
    a paragraph, or a piece of one, spliced in twice."""
    prose = re.sub(r"```.*?```", " ", text, flags=re.S)
    prose = re.sub(r"^\|.*$", " ", prose, flags=re.M)  # table rows repeat their separators by design
    tokens = prose.split()
    seen: dict[tuple[str, ...], int] = {}
    repeats = []
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i:i + words])
        if run in seen and seen[run] + words <= i:  # a second, non-overlapping occurrence
            repeats.append(" ".join(run))
        seen.setdefault(run, i)
    return repeats


def test_no_page_repeats_a_passage():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        repeats = repeated_runs(page.read_text())
        assert not repeats, f"{page.name} repeats a passage: {repeats[0]!r}"


def test_the_repeat_check_finds_a_spliced_passage():
    sentence = "a method is one file in the methods folder implementing the hooks of the base module plus one line"
    assert repeated_runs(f"{sentence}; then more words.\n\nOther text. {sentence}.")
    assert not repeated_runs(f"{sentence}; then more words.")
