"""The documentation site builds strict, and strict really refuses a broken link or anchor.

The build is ``mkdocs build --strict`` with the repository's ``mkdocs.yml`` (what ``make
docs`` runs), into a temporary directory. The second half builds tiny sites with the same
``validation`` settings to show that each kind of breakage fails such a build rather than
passing with a warning nobody reads.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"


def _mkdocs_build(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,  # mkdocs.yml's paths (the griffe extension) are relative to it
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


def _config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def test_the_site_builds_strict_with_every_page_and_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = _mkdocs_build(CONFIG, site)
    assert result.returncode == 0, result.stderr
    # The SDK reference is rendered from the docstrings, not left as ::: directives.
    sdk = (site / "manual" / "sdk-reference" / "index.html").read_text()
    assert "ExplanationProducer" in sdk and "submit_many" in sdk and ":::" not in sdk
    assert ":class:" not in sdk  # reST roles became code (consumer/dev/docroles.py)
    config = (site / "manual" / "configuration" / "index.html").read_text()
    assert "KAFKA_BOOTSTRAP_SERVERS" in config
    # Files that are not pages are copied, not refused.
    assert (site / "benchmarks" / "priority_cdf.png").is_file()
    assert (site / "benchmarks" / "pipeline.json").is_file()
    assert (site / "reliability" / "summary.json").is_file()


def test_the_site_checks_every_kind_of_link() -> None:
    validation = _config()["validation"]
    for check in ("omitted_files", "absolute_links", "unrecognized_links", "anchors", "not_found"):
        assert validation[check] == "warn", check  # --strict turns each warning into an error


def _tiny_site(tmp_path: Path, index: str, *, nav: list[str]) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n{index}\n")
    (docs / "other.md").write_text("# Other\n\n## A real heading\n")
    config = {
        "site_name": "tiny",
        "docs_dir": str(docs),
        "validation": _config()["validation"],
        "markdown_extensions": [{"toc": {"permalink": True}}],
        "nav": nav,
    }
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("index", "nav", "message"),
    [
        ("[broken](other.md#no-such-heading)", ["index.md", "other.md"], "anchor"),
        ("[broken](#no-such-heading)", ["index.md", "other.md"], "anchor"),
        ("[broken](missing.md)", ["index.md", "other.md"], "missing.md"),
        ("[fine](other.md#a-real-heading)", ["index.md"], 'not included in the "nav"'),
    ],
    ids=["anchor-on-another-page", "anchor-on-the-page", "missing-page", "page-not-in-nav"],
)
def test_a_strict_build_fails_on_a_broken_link(
    tmp_path: Path, index: str, nav: list[str], message: str
) -> None:
    result = _mkdocs_build(_tiny_site(tmp_path, index, nav=nav), tmp_path / "out")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output
    assert "strict mode" in output


def test_a_tiny_site_without_breakage_builds(tmp_path: Path) -> None:
    config = _tiny_site(tmp_path, "[fine](other.md#a-real-heading)", nav=["index.md", "other.md"])
    result = _mkdocs_build(config, tmp_path / "out")
    assert result.returncode == 0, result.stderr


def test_the_readmes_links_into_the_site_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/manual/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == [], f"README links to files that do not exist: {missing}"
    nav_pages = set(re.findall(r"([\w/-]+\.md)", CONFIG.read_text()))
    pages = {link.removeprefix("docs/") for link in local if link.endswith(".md")}
    assert pages <= nav_pages, f"README links to pages outside the site's nav: {pages - nav_pages}"


def _table(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def test_the_readmes_headline_table_is_the_benchmarks_page_table() -> None:
    header = "| benchmark | goal | measured (ratio, same run) | verdict |"
    readme = _table((ROOT / "README.md").read_text(), header)
    manual = _table((ROOT / "docs" / "manual" / "benchmarks.md").read_text(), header)
    assert len(readme) > 2
    assert readme == manual, "copy the headline table from docs/manual/benchmarks.md"
