"""Optional: the course's static site (`make site`) in a real browser. The site is built into a
temporary folder and every page is opened from disk (file://) in a Chromium-family browser with
every request that would leave the machine refused and recorded. For each page: no console error,
no failed or outside request, the math typeset by the site's own MathJax (no raw $...$ left),
every figure an image that loaded, and the navigation (all notebooks, previous / next, the page's
table of contents) leading to pages and anchors that exist.

    make test-browser        (installs the Python package playwright; never downloads a browser)

Skipped, with the reason, when no Chromium-family browser is installed (on Debian/Ubuntu:
``apt install chromium``; or point COURSE_BROWSER at the executable).
"""
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_jupyterlab_in_a_browser as lab_test  # noqa: E402  (one place for the browser's name and flags)

LOCAL = re.compile(r"^(?:file:|data:|blob:|about:blank|https?://(?:localhost|127\.0\.0\.1|\[::1\])(?::\d+)?/)")

PAGE_STATE = """() => {
  const main = document.querySelector('.course-main').cloneNode(true);
  main.querySelectorAll('pre, code, script, style, mjx-container, .highlight').forEach(e => e.remove());
  const raw = (main.textContent.match(/\\$[^$\\n]+\\$/g) || []).slice(0, 5);
  const images = Array.from(document.images).map(img => ({src: img.src.slice(0, 40), ok: img.complete && img.naturalWidth > 0}));
  const nav = Array.from(document.querySelectorAll('.course-sidebar a, .course-pager a, .course-header a, .course-map a'))
                   .map(a => a.href);
  const toc = Array.from(document.querySelectorAll('.course-toc a')).map(a => a.getAttribute('href'));
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
  return {raw, images, nav, toc, ids, math: document.querySelectorAll('mjx-container').length,
          title: document.title};
}"""


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    from tutorial_lib import site as course_site

    out = tmp_path_factory.mktemp("course") / "site"
    course_site.build(ROOT / "notebooks", out)
    return out


def test_the_static_site_in_a_real_browser(built_site):
    executable = lab_test.find_browser()
    if executable is None:
        pytest.skip("no Chromium-family browser found (looked for " + ", ".join(lab_test.CANDIDATES) +
                    " on PATH and COURSE_BROWSER); install one, e.g. `apt install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                                                 "(make test-browser installs it)")
    out = built_site
    notebook_pages = [out / f"{nb.stem}.html" for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    pages = [out / "index.html", *notebook_pages, *sorted(out.glob("tutorial_lib.*.html"))]
    outside, problems, states = [], [], {}

    def route(request_route):
        url = request_route.request.url
        if LOCAL.match(url):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=lab_test.ARGS)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(f"{page.url}: console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"{page.url}: error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"{page.url}: failed: {r.url[:120]} {r.failure}"))
            for path in pages:
                page.goto(path.as_uri(), wait_until="load", timeout=120_000)
                if page.locator('script[src$="mathjax/tex-svg-full.js"]').count():
                    page.wait_for_function("() => document.documentElement.getAttribute('data-math') === 'typeset'",
                                           timeout=120_000)
                states[path] = page.evaluate(PAGE_STATE)
                toc = states[path]["toc"]
                if len(toc) >= 3:  # the table of contents scrolls to its heading
                    middle = toc[len(toc) // 2]
                    page.locator(f'.course-toc a[href="{middle}"]').click()
                    page.wait_for_function("h => location.hash === h", arg=middle, timeout=30_000)
                    top = page.evaluate("id => document.getElementById(id).getBoundingClientRect().top", middle[1:])
                    if not -5 <= top <= 100:
                        problems.append(f"{path.name}: the contents entry {middle} scrolled to {top:.0f} px")
            for i, path in enumerate(notebook_pages[:-1]):  # previous / next by clicking, as a reader does
                page.goto(path.as_uri(), wait_until="domcontentloaded", timeout=120_000)
                page.locator(".course-pager a.course-next").first.click()
                page.wait_for_url(notebook_pages[i + 1].as_uri(), timeout=60_000)
                page.locator(".course-pager a.course-prev").first.click()
                page.wait_for_url(path.as_uri(), timeout=60_000)
        finally:
            browser.close()

    assert not outside, f"requests that would leave the machine: {sorted(set(outside))[:10]}"
    assert not problems, "\n".join(problems[:20])
    ids = {path.resolve(): set(state["ids"]) for path, state in states.items()}
    for path, state in states.items():
        assert not state["raw"], f"{path.name}: math left untypeset: {state['raw']}"
        assert all(image["ok"] for image in state["images"]), f"{path.name}: images that did not load: {state['images']}"
        if path in notebook_pages:
            assert state["images"], f"{path.name}: no figure"
            assert state["math"] > 0, f"{path.name}: no typeset formula"
            assert len(state["toc"]) >= 5, f"{path.name}: a table of contents of {len(state['toc'])} entries"
        assert all(href[1:] in state["ids"] for href in state["toc"]), f"{path.name}: a contents entry without its heading"
        assert state["nav"], f"{path.name}: no navigation"
        for url in state["nav"]:
            parts = urlsplit(url)
            assert parts.scheme == "file", f"{path.name}: navigation leaves the site: {url}"
            target = Path(unquote(parts.path)).resolve()
            assert target.is_file(), f"{path.name}: navigation to a missing page: {url}"
            if parts.fragment and target in ids:
                assert parts.fragment in ids[target], f"{path.name}: navigation to a missing anchor: {url}"
    assert len(states) == len(pages)
