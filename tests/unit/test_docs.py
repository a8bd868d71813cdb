"""The docs: the README's size, links that stay inside the repository, and the generated tables
(the application's arguments from AppArgs; the GPU table is checked in benchmark/)."""

import os
import re

from support.docs import ARGS_END, ARGS_START, arguments_table, replace_between
from support.service import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_readme_is_short_and_the_docs_have_a_page_per_task():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024
    names = {page.stem for page in PAGES[1:]}
    assert {"api", "clients", "configuration", "operating", "kubernetes", "performance", "load-testing",
            "architecture", "testing"} <= names  # fmt: skip


def test_every_relative_link_is_a_file_of_the_repository():
    for page in PAGES:
        for target, _ in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name}: {target}"


def test_the_arguments_table_is_generated_from_app_args():
    page = ROOT / "docs" / "configuration.md"
    document = page.read_text()
    expected = replace_between(document, ARGS_START, ARGS_END, arguments_table())
    if os.environ.get("UPDATE_DOCS"):
        page.write_text(expected)
    assert document == expected, "docs/configuration.md is out of date: UPDATE_DOCS=1 pytest tests/unit/test_docs.py"


def test_no_page_points_outside_the_repository():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page.name
