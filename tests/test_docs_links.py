"""The README and the pages under docs/ hold together: every relative link reaches a file that
exists (and, with a `#fragment`, a heading of it), the README stays a short first read, and the
configuration table names every `DISTILL_*` setting of `app/settings.py` and nothing else."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SETTING_ROW = re.compile(r"^\| `(DISTILL_[A-Z0-9_]+)` \|")


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's ids for the headings of a markdown file: lower case, punctuation dropped, spaces
    as hyphens, a repeated heading suffixed -1, -2, ..."""
    seen: Counter[str] = Counter()
    ids = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            ids.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return ids


def broken_links(path: Path) -> list[str]:
    broken = []
    for line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif fragment and (linked.suffix != ".md" or fragment not in anchors(linked)):
                broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def setting_rows(path: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if match := SETTING_ROW.match(line):
            rows.setdefault(match.group(1), []).append(line)
    return rows


def env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "DISTILL_"
    return {prefix + name.upper() for name in Settings.model_fields}


def test_every_relative_link_reaches_a_file_and_a_heading() -> None:
    assert len(PAGES) > 5
    broken = {p.relative_to(ROOT).as_posix(): b for p in PAGES if (b := broken_links(p))}
    assert not broken, broken


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    # Given a page linking a heading it has, one it lacks, a missing file and code that looks
    # like a link
    (tmp_path / "other.md").write_text("# Other\n\n## Its part, `code` (too)\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#its-part-code-too) [ok](#page) [web](https://x.org/#y)\n"
                    "[bad](other.md#nowhere) [gone](missing.md) `[code](nope.md)`\n"
                    "```\n[fenced](nope.md)\n```\n")
    # When it is checked
    broken = broken_links(page)
    # Then only the two bad links are reported
    assert [b.split(":")[0] for b in broken] == ["other.md#nowhere", "missing.md"]


def test_the_readme_stays_a_first_read() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"the README does not link {page.name}"


def test_the_configuration_table_names_every_setting_and_nothing_else() -> None:
    rows = setting_rows(CONFIGURATION)
    assert not {name for name, lines in rows.items() if len(lines) > 1}, "a setting twice"
    settings = env_names()
    assert not settings - rows.keys(), f"settings missing from the table: {settings - rows.keys()}"
    assert not rows.keys() - settings, f"rows that are no setting: {rows.keys() - settings}"


def test_a_setting_shown_on_another_page_is_the_configuration_tables_row() -> None:
    table = {name: lines[0] for name, lines in setting_rows(CONFIGURATION).items()}
    for page in PAGES:
        if page == CONFIGURATION:
            continue
        for name, lines in setting_rows(page).items():
            assert name in table, (page.name, name)
            assert lines == [table[name]], (page.name, name)
