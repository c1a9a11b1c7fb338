"""The documentation is what the code says: the methods page's reference section is generated from each method's
docstring (rule and departures, written once in the method's file), and the README stays a front door (≤ 250
lines) whose links to the docs resolve. (``mkdocs build --strict``, run by ``.ci/run``, checks the site itself.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from drl_tune.methods import REGISTRY
from drl_tune.methods.reference import END, START, markdown

ROOT = Path(__file__).resolve().parent.parent


def test_the_methods_reference_is_generated_from_the_method_files():
    page = (ROOT / "docs" / "methods.md").read_text()
    assert markdown() in page, "docs/methods.md is stale: paste python -m drl_tune.methods.reference"
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
