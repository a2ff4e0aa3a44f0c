"""The course as a static website, built from the committed, executed notebooks.

    python -m tutorial_lib.site notebooks site        (or: make site; then open site/index.html)

One page per notebook, rendered by nbconvert's JupyterLab template (cells and their outputs as
committed, exercise checkers' verdicts included), with the course's navigation (previous, next,
all notebooks), the page's table of contents, and links to the notebook file and to the source
of its module in the package. The landing page shows the course map of README.md, read at build
time, so README stays the one place where the map is written.

Nothing is fetched, at build time or when a page is read: MathJax comes from the
``django-static-mathjax`` package and is copied into ``site/_static/``, figures are embedded in
the pages, and the notebook files and module sources the pages link to are copied beside them.
The result is a folder of static files that any web server, or a browser opening
``site/index.html`` from disk, can show.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters.markdown import markdown2html
from nbformat.warnings import MissingIDFieldWarning
from traitlets.config import Config

TEMPLATES = Path(__file__).resolve().parent / "site_templates"
COURSE_TEMPLATE = TEMPLATES / "course"
MARKER = ".course-site"  # written into the output folder; only such a folder is ever replaced
# MathJax 3 from the django-static-mathjax package (a plain copy of MathJax's release, no
# dependencies): one combined file that typesets TeX as SVG (no web fonts to load), and the parts
# it loads on demand (menu, accessibility, TeX packages by \require).
MATHJAX_DIST = "django-static-mathjax"
MATHJAX_ES5 = "mathjax/static/mathjax/es5"
MATHJAX_FILES = ("tex-svg-full.js", "a11y", "adaptors", "input", "output/svg.js", "output/svg", "sre", "ui")
# Package modules that every notebook uses (set-up, checkers, plots): never "the module" of a page.
SUPPORT = {"exercises", "plotting", "notebook", "_environment"}


@dataclass
class Module:
    name: str            # "se"
    path: str            # "tutorial_lib/se.py", the file's path in the repository
    href: str            # the page that shows its source


@dataclass
class Page:
    notebook: Path
    number: str          # "01"
    short: str           # "squeeze-and-excitation"
    href: str            # "01_squeeze_excitation.html"
    mechanism: str = ""  # HTML, from the course map
    paper: str = ""      # HTML, from the course map
    what: str = ""       # HTML, from the course map
    modules: list[Module] = field(default_factory=list)

    @property
    def notebook_name(self) -> str:
        return self.notebook.name

    @property
    def notebook_href(self) -> str:
        return f"notebooks/{self.notebook.name}"


# ---------------------------------------------------------------------------------------------
# README: the course map


def _inline(markdown: str) -> str:
    """One table cell of Markdown as inline HTML."""
    html = markdown2html(markdown.strip()).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", html, flags=re.S)


def read_course_map(readme: Path) -> dict:
    """The course map of README.md: its rows by notebook file name, and the text around it."""
    text = readme.read_text(encoding="utf-8")
    title_match = re.search(r"^# (.+)$", text, flags=re.M)
    title = title_match.group(1).strip() if title_match else "The course"
    after_title = text[title_match.end():] if title_match else text
    intro = next((p for p in re.split(r"\n\s*\n", after_title) if p.strip() and not p.lstrip().startswith(("#", "```", "|"))), "")
    section = re.search(r"^## Course map\s*$(.*?)(?=^## )", text, flags=re.M | re.S)
    rows, header, after = {}, None, []
    if section:
        lines = section.group(1).strip().splitlines()
        table = [line for line in lines if line.startswith("|")]
        after = [line for line in lines if not line.startswith("|")]
        for line in table:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = [cell.lower() for cell in cells]
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            row = dict(zip(header, cells))
            link = re.search(r"\[([^\]]+)\]\(([^)]+\.ipynb)\)", row.get("notebook", ""))
            if link:
                rows[Path(link.group(2)).name] = {"short": link.group(1), **row}
    return {"title": title, "intro": intro.strip(), "rows": rows,
            "after": "\n".join(after).strip()}


# ---------------------------------------------------------------------------------------------
# the package: which module a notebook derives


def public_names(package: Path) -> dict[str, str]:
    """Public name -> module file stem, read from the package's ``__init__.py`` (no import)."""
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = node.module.split(".")[0]
    for node in tree.body:  # names loaded on first use: _LAZY = {"name": "module", ...}
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                for key, value in zip(node.value.keys, node.value.values):
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                        names.setdefault(key.value, value.value)
    return names


def modules_of(nb, row: dict | None, package: Path, names: dict[str, str]) -> list[str]:
    """The package modules a notebook derives, in this order of evidence:
    the names its course-map row gives in backticks (``SqueezeExcitation`` -> se);
    else the modules it imports by name (``from tutorial_lib.zoo import ...``);
    else the two modules whose names its code uses most (``tl.show_shape`` -> checks)."""
    def existing(stems):
        out = []
        for stem in stems:
            if stem not in out and stem not in SUPPORT and (package / f"{stem}.py").is_file():
                out.append(stem)
        return out

    if row:
        found = existing(names[n] for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row.get("mechanism", ""))
                         if n in names)
        if found:
            return found
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    found = existing(re.findall(rf"from {package.name}\.(\w+) import", code))
    if found:
        return found
    counts: dict[str, int] = {}
    for name in re.findall(r"\btl\.([A-Za-z_]\w*)", code):
        stem = names.get(name)
        if stem:
            counts[stem] = counts.get(stem, 0) + 1
    ranked = sorted(counts, key=lambda stem: (-counts[stem], stem))
    return existing(ranked)[:2]


# ---------------------------------------------------------------------------------------------
# pages


HEADING = re.compile(r"<h[1-3][\s>].*?</h[1-3]>", flags=re.S)


class _Headings(HTMLParser):
    """The h1-h3 headings of a rendered page that carry an id: (level, id, text)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headings, self._open, self._skip = [], None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3") and attrs.get("id"):
            self._open = [int(tag[1]), attrs["id"], ""]
        elif self._open and tag == "a" and "anchor-link" in (attrs.get("class") or ""):
            self._skip += 1

    def handle_endtag(self, tag):
        if self._open and tag == "a" and self._skip:
            self._skip -= 1
        elif self._open and tag == f"h{self._open[0]}":
            self.headings.append((self._open[0], self._open[1], " ".join(self._open[2].split())))
            self._open = None

    def handle_data(self, data):
        if self._open and not self._skip:
            self._open[2] += data


def table_of_contents(html: str) -> str:
    parser = _Headings()
    for heading in HEADING.findall(html):  # only the headings: pages carry megabytes of figures
        parser.feed(heading)
    if not parser.headings:
        return '<ul class="course-toc"></ul>'
    items = "\n".join(f'  <li class="course-toc-{level}"><a href="#{escape(anchor)}">{escape(text)}</a></li>'
                      for level, anchor, text in parser.headings)
    return f'<ul class="course-toc">\n{items}\n</ul>'


def _link_rewriter(pages: list[Page], modules: dict[str, Module], package: Path):
    """Links inside the notebooks to other notebooks or to package files point at their pages."""
    by_name = {page.notebook.name: page.href for page in pages}

    def rewrite(match: re.Match) -> str:
        if 'class="course-' in match.group(1):  # the course's own links (the notebook file to download)
            return match.group(0)
        target, fragment = match.group(2), match.group(3) or ""
        name = Path(target).name
        if target.endswith(".ipynb") and name in by_name:
            return f'{match.group(1)}"{by_name[name]}{fragment}"'
        if target.endswith(".py") and f"{package.name}/" in target and Path(name).stem in modules:
            return f'{match.group(1)}"{modules[Path(name).stem].href}{fragment}"'
        return match.group(0)

    pattern = re.compile(r'(<a\s[^>]*?href=)"((?!https?:|mailto:|#)[^"#]+\.(?:ipynb|py))(#[^"]*)?"')
    return lambda html: pattern.sub(rewrite, html)


def _exporter() -> HTMLExporter:
    config = Config()
    config.HTMLExporter.template_name = "course"
    config.HTMLExporter.extra_template_basedirs = [str(TEMPLATES)]
    config.HTMLExporter.theme = "light"
    return HTMLExporter(config=config)


def read_notebook(path: Path):
    """A notebook, with an id for every cell (older cells may lack one; the file is not changed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingIDFieldWarning)
        nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell["id"] = f"cell-{i}"
    return nb


def _prepare_output(out: Path) -> None:
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists()):
            raise SystemExit(f"{out} exists and is not a site built by this command; not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("Built by `python -m tutorial_lib.site`; replaced on every build.\n")


def _copy_static(out: Path) -> None:
    import pygments.formatters

    static = out / "_static"
    static.mkdir()
    shutil.copy2(COURSE_TEMPLATE / "static" / "course.css", static / "course.css")
    lab = next((Path(root) / "static" for root in _exporter().template_paths
                if Path(root).name == "lab" and (Path(root) / "static" / "index.css").is_file()), None)
    if lab is None:  # pragma: no cover - nbconvert ships its lab template
        raise SystemExit("nbconvert's lab template was not found")
    (static / "jupyterlab.css").write_text(
        (lab / "index.css").read_text(encoding="utf-8") + "\n" + (lab / "theme-light.css").read_text(encoding="utf-8"),
        encoding="utf-8")
    formatter = pygments.formatters.HtmlFormatter(style="default")
    (static / "pygments.css").write_text(formatter.get_style_defs(".course-source .highlight"), encoding="utf-8")
    es5 = Path(metadata.distribution(MATHJAX_DIST).locate_file(MATHJAX_ES5))
    for name in MATHJAX_FILES:
        source, target = es5 / name, static / "mathjax" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    shutil.copy2(es5.parent / "LICENSE", static / "mathjax" / "LICENSE")


def _source_page(module: Module, source: str, users: list[Page]) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    code = highlight(source, PythonLexer(), HtmlFormatter(linenos="inline", lineanchors="L", anchorlinenos=True))
    used_by = ", ".join(f'<a href="{page.href}">{escape(page.number)} {escape(page.short)}</a>' for page in users)
    return (f'<header class="course-header"><p class="course-kicker">Source in the package</p>'
            f"<h1>{escape(module.path)}</h1>"
            f'<p class="course-files">Derived in: {used_by} · Plain file: '
            f'<a class="course-raw-source" href="{escape(module.path)}" download>{escape(Path(module.path).name)}</a></p>'
            f'</header>\n<div class="course-source">{code}</div>')


def _definitions(source: str) -> str:
    """A module's table of contents: its public classes and functions, linked to their lines."""
    items = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            line = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            items.append(f'  <li class="course-toc-2"><a href="#L-{line}"><code>{kind} {escape(node.name)}</code></a></li>')
    return '<ul class="course-toc">\n' + "\n".join(items) + "\n</ul>"


def _landing_page(course: dict, pages: list[Page]) -> str:
    rows = []
    for page in pages:
        rows.append(f'<tr><td>{escape(page.number)}</td><td><a href="{page.href}">{escape(page.short)}</a></td>'
                    f"<td>{page.mechanism}</td><td>{page.paper}</td><td>{page.what}</td></tr>")
    table = ('<table class="course-map" id="course-map-table">\n<thead><tr><th>#</th><th>notebook</th>'
             "<th>mechanism</th><th>paper</th><th>what you will see</th></tr></thead>\n<tbody>\n"
             + "\n".join(rows) + "\n</tbody>\n</table>")
    return (f'<h1 id="top">{escape(course["title"])}</h1>\n{markdown2html(course["intro"])}\n'
            f'<h2 id="course-map">Course map</h2>\n{table}\n{markdown2html(course["after"])}\n'
            '<h2 id="reading-and-running">Reading and running</h2>\n'
            "<p>Each page is one notebook as it was executed, with every output: the derivations, "
            "the figures and the exercise checkers' verdicts. To run a notebook yourself, download its "
            "file from the top of its page, or take the whole course and start it with <code>make lab</code>.</p>")


def build(notebooks: Path, out: Path, readme: Path | None = None, package: Path | None = None) -> list[Path]:
    """Build the site from ``notebooks/*.ipynb`` into ``out``; return the pages written."""
    root = Path(notebooks).resolve().parent
    readme = Path(readme) if readme else root / "README.md"
    package = Path(package) if package else Path(__file__).resolve().parent
    paths = sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks (NN_*.ipynb) in {notebooks}")
    course = read_course_map(readme) if readme.is_file() else {"title": "The course", "intro": "", "rows": {}, "after": ""}
    names = public_names(package)

    _prepare_output(out)
    _copy_static(out)
    (out / "notebooks").mkdir()

    pages, books, modules = [], {}, {}
    for path in paths:
        nb = read_notebook(path)
        row = course["rows"].get(path.name)
        number = path.name[:2]
        short = row["short"] if row else path.stem[3:].replace("_", " ")
        page = Page(notebook=path, number=number, short=short, href=f"{path.stem}.html")
        if row:
            page.mechanism = _inline(row.get("mechanism", ""))
            paper = row.get("paper", "").strip()
            page.paper = "" if paper in ("", "—", "-") else _inline(paper)
            page.what = _inline(row.get("what you will see", ""))
        for stem in modules_of(nb, row, package, names):
            modules.setdefault(stem, Module(stem, f"{package.name}/{stem}.py", f"{package.name}.{stem}.html"))
            page.modules.append(modules[stem])
        nb.metadata["title"] = f"{number} · {short} — {course['title']}"
        pages.append(page)
        books[path.name] = nb

    site = {"title": course["title"], "pages": pages}
    exporter = _exporter()
    rewrite = _link_rewriter(pages, modules, package)
    written = []
    for i, page in enumerate(pages):
        resources = {"course": {"site": site, "page": page,
                                "prev": pages[i - 1] if i > 0 else None,
                                "next": pages[i + 1] if i + 1 < len(pages) else None},
                     "metadata": {"name": page.notebook.stem, "path": str(page.notebook.parent)}}
        html, _ = exporter.from_notebook_node(books[page.notebook.name], resources=resources)
        html = rewrite(html)
        html = html.replace("<!--course-toc-->", table_of_contents(html), 1)
        (out / page.href).write_text(html, encoding="utf-8")
        shutil.copy2(page.notebook, out / page.notebook_href)
        written.append(out / page.href)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(COURSE_TEMPLATE)), autoescape=True,
                             keep_trailing_newline=True)
    template = env.get_template("page.html.j2")

    def write_page(href: str, title: str, body: str, toc: str | None = None, **flags) -> None:
        html = template.render(site=site, current=href, title=title, body=body, **flags)
        html = html.replace("<!--course-toc-->", toc if toc is not None else table_of_contents(html), 1)
        (out / href).write_text(html, encoding="utf-8")
        written.append(out / href)

    write_page("index.html", course["title"], _landing_page(course, pages), with_math=True)
    (out / package.name).mkdir()
    for stem, module in modules.items():
        source = (package / f"{stem}.py").read_text(encoding="utf-8")
        shutil.copy2(package / f"{stem}.py", out / module.path)
        users = [page for page in pages if module in page.modules]
        write_page(module.href, module.path, _source_page(module, source, users), toc=_definitions(source),
                   with_pygments=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, help="folder of the executed notebooks (notebooks)")
    parser.add_argument("out", type=Path, help="folder to write the site into (site); replaced on every build")
    parser.add_argument("--readme", type=Path, default=None, help="README with the course map (default: beside the notebooks' folder)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    written = build(args.notebooks, args.out, readme=args.readme)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(written)} pages in {args.out}/ ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s; "
          f"open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
