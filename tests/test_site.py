"""`make site`: the course as static HTML, built from the committed notebooks (no browser here;
browser_tests/test_site_in_a_browser.py opens the same pages in Chromium).

The site is built once into a temporary folder; the tests read it as a browser would: every
notebook has a page, every link and anchor resolves inside the site, nothing is loaded from
outside it, math is left for the site's own MathJax, and figures are embedded images."""
import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tutorial_lib import site as course_site

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)          # http://, https://, //host, ...
CSS_EXTERNAL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)
LOADING_ATTRIBUTES = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}


class Page(HTMLParser):
    """What a test needs from one HTML file: its elements' attributes, ids, scripts and styles."""

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.path, self.tags, self.ids, self.scripts, self.styles = path, [], set(), [], []
        self._in = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag in ("script", "style"):
            self._in = tag
        if "style" in attrs:
            self.styles.append(attrs["style"])

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)

    def links(self, css_class: str | None = None):
        return [attrs["href"] for tag, attrs in self.tags
                if tag == "a" and "href" in attrs and (css_class is None or css_class in attrs.get("class", "").split())]


def _resolve(page: Path, href: str) -> tuple[Path, str]:
    parts = urlsplit(href)
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    return target, parts.fragment


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "site"
    written = course_site.build(ROOT / "notebooks", out)
    pages = {path: Page(path) for path in out.glob("*.html")}
    assert set(written) == set(pages)
    return out, pages


def test_every_notebook_has_a_page_and_the_landing_page_maps_the_course(site):
    out, pages = site
    assert NOTEBOOKS
    index = pages[out / "index.html"]
    listed = index.links()
    course = course_site.read_course_map(ROOT / "README.md")
    for notebook in NOTEBOOKS:
        assert (out / f"{notebook.stem}.html") in pages, f"no page for {notebook.name}"
        assert f"{notebook.stem}.html" in listed, f"the landing page does not link {notebook.name}"
    text = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="course-map"' in text and "<table" in text
    for name, row in course["rows"].items():  # the README's course map, row by row
        if (ROOT / "notebooks" / name).exists():
            arxiv = re.findall(r"arXiv \d{4}\.\d{4,5}", row["paper"])
            assert all(a in text for a in arxiv), f"{name}: the paper of the course map is missing"


def test_no_student_copy_and_no_unexpected_file(site):
    out, _ = site
    assert not list(out.rglob("*student*"))
    notebooks = sorted(p.name for p in (out / "notebooks").iterdir())
    assert notebooks == [p.name for p in NOTEBOOKS]


def test_every_link_and_anchor_resolves_inside_the_site(site):
    out, pages = site
    ids = {path: page.ids for path, page in pages.items()}
    checked = 0
    for path, page in pages.items():
        for href in page.links():
            if EXTERNAL.match(href) or href.startswith("mailto:"):
                continue
            target, fragment = _resolve(path, href)
            assert target.is_file(), f"{path.name}: link {href!r} leads nowhere"
            assert out.resolve() in target.parents or target.parent == out.resolve(), f"{path.name}: {href!r} leaves the site"
            if fragment and target.suffix == ".html":
                assert fragment in ids[target], f"{path.name}: anchor {href!r} is not on its page"
            checked += 1
    assert checked > 100


def test_every_page_has_the_course_navigation_and_its_table_of_contents(site):
    out, pages = site
    order = [f"{nb.stem}.html" for nb in NOTEBOOKS]
    for i, name in enumerate(order):
        page = pages[out / name]
        assert set(order) <= set(page.links()), f"{name}: the list of all notebooks is incomplete"
        assert "index.html#course-map" in page.links("course-up")
        assert page.links("course-prev") == ([order[i - 1]] * 2 if i else [])
        assert page.links("course-next") == ([order[i + 1]] * 2 if i + 1 < len(order) else [])
        toc = [href for href in page.links() if href.startswith("#")]
        assert len(toc) >= 5, f"{name}: a table of contents of {len(toc)} entries"
        assert all(href[1:] in page.ids for href in toc)
    for path, page in pages.items():  # the other pages too: home, all notebooks
        assert "index.html" in page.links() and set(order) <= set(page.links()), path.name


def test_nothing_is_loaded_from_outside_the_site(site):
    out, pages = site
    for path, page in pages.items():
        for tag, attrs in page.tags:
            for name, value in attrs.items():
                if name in LOADING_ATTRIBUTES and not (tag == "a" and name == "href"):
                    assert not EXTERNAL.match(value), f"{path.name}: <{tag} {name}={value[:80]!r}> loads from outside"
                    if tag in ("script", "link", "img", "source") and value and not value.startswith(("data:", "#")):
                        target, _ = _resolve(path, value.split("?")[0])
                        assert target.is_file(), f"{path.name}: <{tag} {name}={value!r}> is missing"
        for css in page.styles:
            assert not CSS_EXTERNAL.search(css), f"{path.name}: a style loads from outside"
        for script in page.scripts:
            assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", script, re.I), f"{path.name}: a script names a host"
    for css in (out / "_static").glob("*.css"):
        assert not CSS_EXTERNAL.search(css.read_text(encoding="utf-8")), f"{css.name} loads from outside"


def _markdown_math(notebook: Path) -> int:
    nb = course_site.read_notebook(notebook)
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    text = re.sub(r"`[^`]*`", "", text)
    return len(re.findall(r"\$\$.+?\$\$|\$[^$\n]+\$", text, re.S))


def test_math_is_left_for_the_sites_own_mathjax(site):
    out, pages = site
    mathjax = out / "_static" / "mathjax" / "tex-svg-full.js"
    assert mathjax.is_file() and mathjax.stat().st_size > 1_000_000
    with_math = 0
    for notebook in NOTEBOOKS:
        page = pages[out / f"{notebook.stem}.html"]
        sources = [attrs.get("src", "") for tag, attrs in page.tags if tag == "script"]
        assert "_static/mathjax/tex-svg-full.js" in sources, f"{notebook.name}: MathJax is not loaded"
        assert any("inlineMath" in script and '["$", "$"]' in script for script in page.scripts)
        expected = _markdown_math(notebook)
        if expected:
            with_math += 1
            text = page.path.read_text(encoding="utf-8")
            found = len(re.findall(r"\$\$.+?\$\$|\$[^$\n<]+\$", text, re.S))
            assert found >= expected // 2, f"{notebook.name}: {found} formulas on the page, {expected} in the notebook"
    assert with_math >= len(NOTEBOOKS) // 2


def test_figures_are_embedded_images(site):
    out, pages = site
    for notebook in NOTEBOOKS:
        nb = course_site.read_notebook(notebook)
        figures = sum("image/png" in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                      for output in cell.outputs)
        images = [attrs["src"] for tag, attrs in pages[out / f"{notebook.stem}.html"].tags
                  if tag == "img" and attrs.get("src", "").startswith("data:image/png;base64,")]
        assert len(images) == figures, f"{notebook.name}: {len(images)} images for {figures} figures"
        for src in images:
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_exercise_checkers_render_with_their_committed_output(site):
    out, _ = site
    checked = 0
    for notebook in NOTEBOOKS:
        nb = course_site.read_notebook(notebook)
        text = (out / f"{notebook.stem}.html").read_text(encoding="utf-8")
        for cell in nb.cells:
            if cell.cell_type == "code" and "check(" in cell.source:
                for output in cell.outputs:
                    if output.output_type == "stream" and output.text.strip():
                        line = output.text.strip().splitlines()[0].strip()
                        escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                        assert escaped in text or line in text, f"{notebook.name}: {line!r} is missing"
                        checked += 1
    assert checked >= len(NOTEBOOKS)


def test_each_page_links_its_notebook_file_and_its_modules_source(site):
    out, pages = site
    course = course_site.read_course_map(ROOT / "README.md")
    names = course_site.public_names(ROOT / "tutorial_lib")
    for notebook in NOTEBOOKS:
        path = out / f"{notebook.stem}.html"
        page = pages[path]
        [file_link] = page.links("course-notebook-file")
        target, _ = _resolve(path, file_link)
        assert target.read_bytes() == notebook.read_bytes()
        sources = page.links("course-module-source")
        assert sources, f"{notebook.name}: no link to its module's source"
        for href in sources:
            source_page, _ = _resolve(path, href)
            [raw] = pages[source_page].links("course-raw-source")
            raw_file, _ = _resolve(source_page, raw)
            assert raw_file.read_bytes() == (ROOT / raw_file.relative_to(out.resolve())).read_bytes()
        row = course["rows"].get(notebook.name, {})
        for name in re.findall(r"`(\w+)`", row.get("mechanism", "")):
            if name in names:  # a mechanism named by the course map: its module is linked
                assert f"tutorial_lib.{names[name]}.html" in sources, f"{notebook.name}: {name}'s module"


def test_the_build_never_replaces_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a site"):
        course_site.build(ROOT / "notebooks", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
