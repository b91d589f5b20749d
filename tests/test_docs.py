"""The documentation cannot lie: its examples run, its generated parts are fresh, it covers
the whole API, the paths it names exist, and it builds with ``mkdocs build --strict``.

* every ```` ```python ```` block of each ``docs/**/*.md`` page is executed; the blocks of one
  page run in order in one shared namespace (a block is skipped only when its fence says
  ``title="not run"``); a ```` ```text title="output" ```` block right after a Python block
  must equal what that block printed;
* the U-Net table and receptive field (``docs/generated/``) equal a fresh run of
  ``docs/scripts/unet_table.py``, and the exact receptive field agrees with autograd;
* every name of ``minicnn.functional.__all__`` and every optimizer has a heading on some page
  and is called in an executed example of that page;
* every repository path written in code formatting on a page (``minicnn/tensor.py``,
  ``tests/test_ops.py::test_conv2d``) exists, and so does the function after ``::``;
* every image a page shows is drawn by ``docs/scripts/make_figures.py``;
* ``mkdocs build --strict`` succeeds (skipped, with the reason, where mkdocs or a plugin the
  site needs is not installed), and the built site loads nothing from another host (it works
  offline: MathJax and its fonts are served by the site).
"""
import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import minicnn.functional as F
from minicnn import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
SCRIPTS = os.path.join(DOCS, "scripts")
OPTIMIZERS = ("Adam", "SGD", "Adagrad")
NOT_RUN = 'title="not run"'

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)(?P<attrs>[^`]*)$")


def pages():
    """Every Markdown page, relative to docs/, sorted."""
    found = []
    for folder, _, files in os.walk(DOCS):
        found += [os.path.relpath(os.path.join(folder, f), DOCS) for f in files if f.endswith(".md")]
    return sorted(found)


def read(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return f.read()


def fenced_blocks(text):
    """``[(lang, attrs, code, first_line)]`` of the fenced code blocks of a Markdown text."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^{re.escape(indent)}{fence[0]}{{{len(fence)},}}\s*$",
                                              lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"unclosed code fence at line {i + 1}")
        blocks.append((m.group("lang"), m.group("attrs").strip(), "\n".join(body), i + 1,
                       j + 1))
        i = j + 1
    return blocks


def examples(page):
    """``[(code, line, expected_output or None)]``: the page's Python blocks to execute."""
    text = read(page)
    lines = text.split("\n")
    blocks = fenced_blocks(text)
    out = []
    for k, (lang, attrs, code, start, end) in enumerate(blocks):
        if lang != "python" or NOT_RUN in attrs:
            continue
        expected = None
        if k + 1 < len(blocks):
            nlang, nattrs, ncode, nstart, _ = blocks[k + 1]
            between = lines[end:nstart - 1]
            if nlang == "text" and 'title="output"' in nattrs and not any(s.strip() for s in between):
                expected = ncode
        out.append((code, start, expected))
    return out


PAGES = pages()
EXAMPLE_PAGES = [p for p in PAGES if examples(p)]


def run_page(page):
    """Execute the page's Python blocks in order, in one namespace; check printed outputs."""
    namespace = {"__name__": f"docs:{page}"}
    for code, line, expected in examples(page):
        buffer = io.StringIO()
        # leading newlines: tracebacks then give the line number in the .md file
        compiled = compile("\n" * line + code, os.path.join(DOCS, page), "exec")
        with contextlib.redirect_stdout(buffer):
            exec(compiled, namespace)      # noqa: S102  (the docs' own examples)
        if expected is not None:
            printed = "\n".join(s.rstrip() for s in buffer.getvalue().rstrip("\n").split("\n"))
            shown = "\n".join(s.rstrip() for s in expected.rstrip("\n").split("\n"))
            assert printed == shown, (f"docs/{page}, block at line {line}: the output block "
                                      f"says\n{shown}\nbut the code prints\n{printed}")
    return namespace


# ---------------------------------------------------------------------------------- examples
def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n\n```text title=\"output\"\n1\n```\n    ```python\n    y = 2\n    ```\n"
    blocks = fenced_blocks(text)
    assert [(b[0], b[2]) for b in blocks] == [("python", "x = 1"), ("text", "1"), ("python", "y = 2")]


def test_every_page_is_there():
    expected = {"index.md", "autograd.md", "ops.md", "optimizers.md", "unet.md", "cuda.md",
                "layers/conv2d.md", "layers/conv_transpose2d.md", "layers/max_pool2d.md",
                "layers/relu.md", "layers/cat.md", "losses/cross_entropy.md",
                "losses/dice_loss.md", "losses/focal_loss.md", "results.md",
                "data_parallel.md"}
    assert expected <= set(PAGES)


def test_headings_hold_no_tex():
    """The table of contents and the browser's title show a heading as text: TeX there
    stays raw (seen in the browser on the CUDA page)."""
    found = [f"{p}: {line}" for p in PAGES
             for line in re.sub(r"```.*?```", "", read(p), flags=re.S).splitlines()
             if line.startswith("#") and ("$" in line or "\\(" in line)]
    assert not found, found


def test_examples_are_not_switched_off():
    skipped = [p for p in PAGES for lang, attrs, *_ in fenced_blocks(read(p))
               if lang == "python" and NOT_RUN in attrs]
    assert len(skipped) <= 2, f"too many Python blocks marked not run: {skipped}"


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page):
    run_page(page)


def test_every_content_page_has_an_example():
    content = [p for p in PAGES if not p.startswith("generated/")]
    assert sorted(set(content) - set(EXAMPLE_PAGES)) == []


# ---------------------------------------------------------------------------------- coverage
def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headings(text):
    return [line for line in text.split("\n") if re.match(r"^#{1,6} ", line)]


def _code(text):
    return "\n".join(code for lang, attrs, code, *_ in fenced_blocks(text)
                     if lang == "python" and NOT_RUN not in attrs)


@pytest.mark.parametrize("name", F.__all__ + ["optim." + o for o in OPTIMIZERS])
def test_api_is_documented(name):
    """A heading names it (in code formatting) and an executed example on that page uses it."""
    short = name.split(".")[-1]
    heading = re.compile(rf"`(?:F\.|optim\.)?{re.escape(short)}(?:\(\))?`")
    call = re.compile(rf"\b(?:F|functional|optim)\.{re.escape(short)}\b(?!\.)")   # called or passed
    homes = [p for p in PAGES if any(heading.search(h) for h in _headings(read(p)))]
    assert homes, f"no page has a heading with `{short}`"
    assert any(call.search(_code(read(p))) for p in homes), \
        f"no executed example calls {name} on its page(s) {homes}"


def test_all_optimizers_are_the_documented_ones():
    classes = {n for n, v in vars(optim).items()
               if isinstance(v, type) and issubclass(v, optim.Optimizer) and v is not optim.Optimizer}
    assert classes == set(OPTIMIZERS), "a new optimizer needs a section in docs/optimizers.md"


PATH = re.compile(r"`((?:minicnn|cmr|kernels|tests|docs|benchmarks|dev)/[\w./*-]+?)(?:::(\w+))?`")


def test_named_source_paths_exist():
    missing = []
    for page in PAGES:
        for path, name in PATH.findall(read(page)):
            if "*" in path:
                folder, pattern = os.path.split(path)
                ok = os.path.isdir(os.path.join(ROOT, folder)) and any(
                    re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), f)
                    for f in os.listdir(os.path.join(ROOT, folder)))
                if not ok:
                    missing.append(f"{page}: {path}")
                continue
            full = os.path.join(ROOT, path)
            if not os.path.exists(full):
                missing.append(f"{page}: {path}")
            elif name:
                with open(full, encoding="utf-8") as f:
                    source = f.read()
                if not re.search(rf"(\bdef|\bclass|__global__ void|\bstruct)\s+{name}\b|^{name}\s*=",
                                 source, re.M) and not re.search(rf"\b{name}\b", source):
                    missing.append(f"{page}: {path}::{name}")
    assert not missing, "pages name paths that do not exist:\n" + "\n".join(missing)


def test_images_are_drawn_by_the_figure_script():
    figures = set(_load_script("make_figures").FIGURES)
    shown = set()
    for page in PAGES:
        shown |= {os.path.splitext(os.path.basename(m))[0]
                  for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", read(page))}
    assert shown <= figures, f"images not drawn by make_figures.py: {shown - figures}"
    missing = [f for f in figures if not os.path.exists(os.path.join(DOCS, "img", f + ".png"))]
    assert not missing, f"run python docs/scripts/make_figures.py: missing {missing}"
    content = [p for p in PAGES if not p.startswith("generated/")]
    bare = [p for p in content if not re.search(r"!\[[^\]]*\]\([^)]+\.png\)", read(p))]
    assert not bare, f"pages without a figure: {bare}"


# ---------------------------------------------------------------------------------- U-Net
@pytest.fixture(scope="module")
def unet_table():
    return _load_script("unet_table")


def test_unet_table_is_up_to_date(unet_table):
    for path, text in unet_table.generate().items():
        rel = os.path.relpath(path, ROOT)
        assert os.path.exists(path), f"{rel} is missing: run python docs/scripts/unet_table.py"
        with open(path, encoding="utf-8") as f:
            committed = f.read()
        assert committed == text, f"{rel} is stale: run python docs/scripts/unet_table.py"


def test_unet_page_includes_the_generated_files():
    text = read("unet.md")
    for name in ("unet_table.md", "unet_receptive_field.md"):
        assert f'--8<-- "generated/{name}"' in text


def test_exact_receptive_field_matches_autograd(unet_table):
    exact = unet_table.exact_extents()
    small, large = min(exact, key=exact.get), max(exact, key=exact.get)
    measured, _ = unet_table.measured_receptive_field([small, large])
    assert measured == {small: (exact[small],) * 2, large: (exact[large],) * 2}


# ---------------------------------------------------------------------------------- the site
def _missing_site_packages():
    needed = {"mkdocs": "mkdocs", "material": "mkdocs-material", "pymdownx": "pymdown-extensions"}
    return [pkg for module, pkg in needed.items() if importlib.util.find_spec(module) is None]


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The site, built once by ``mkdocs build --strict`` for the tests that read it."""
    missing = _missing_site_packages()
    if missing:
        pytest.skip(f"cannot build the site: {', '.join(missing)} not installed "
                    "(pip install '.[docs]')")
    site = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


def test_mkdocs_build_strict(built_site):
    for page in PAGES:
        if page.startswith("generated/"):
            continue
        html = page[:-3] + "/index.html" if page != "index.md" else "index.html"
        assert (built_site / html).exists(), f"{page} was not built"
    unet = (built_site / "unet" / "index.html").read_text(encoding="utf-8")
    assert "31,030,788" in unet, "the generated U-Net table is not in the built page"


# A URL naming a host: "https://cdn...", "http://...", or protocol-relative "//cdn...".
OTHER_HOST = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
CSS_URL = re.compile(r"""url\(\s*['"]?\s*((?:https?:)?//[^'")\s]+)""", re.I)
# What a browser fetches by itself while showing a page (not the links a reader follows).
LOADED = {"script": ("src",), "link": ("href",), "img": ("src", "srcset"),
          "source": ("src", "srcset"), "iframe": ("src",), "embed": ("src",),
          "object": ("data",), "video": ("src", "poster"), "audio": ("src",)}


class _LoadedURLs(HTMLParser):
    """The URLs a page loads by itself: src/href of script, link, img (...) and the url(...)
    of its inline styles."""

    def __init__(self):
        super().__init__()
        self.urls, self._in_style = [], False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name in LOADED.get(tag, ()):
                self.urls += [v.strip().split()[0] for v in value.split(",") if v.strip()] \
                    if name == "srcset" else [value]
            elif name == "style":
                self.urls += CSS_URL.findall(value)

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += CSS_URL.findall(data)


def loaded_from_other_hosts(html):
    """The URLs of another host that an HTML page loads as it is shown."""
    parser = _LoadedURLs()
    parser.feed(html)
    return [u for u in parser.urls if OTHER_HOST.match(u)]


def test_loaded_from_other_hosts():
    page = ('<link rel="stylesheet" href="//fonts.example.org/a.css"><script src="x.js"></script>'
            '<script src="https://cdn.example.org/m.js"></script><a href="https://example.org">'
            '<img src="img/a.png" srcset="a.png 1x, http://b.example.org/a.png 2x"></a>'
            '<style>p { background: url("https://c.example.org/bg.png") }</style>'
            '<div style="background: url(data:image/png;base64,AA==)"></div>')
    assert loaded_from_other_hosts(page) == [
        "//fonts.example.org/a.css", "https://cdn.example.org/m.js",
        "http://b.example.org/a.png", "https://c.example.org/bg.png"]


def test_site_loads_nothing_from_another_host(built_site):
    """The site works offline (a classroom, a train): no page loads a script, stylesheet,
    font or image from another host, and no stylesheet or script of the site names one in a
    url(...). Links a reader follows (<a href>) may go anywhere."""
    found = []
    for path in sorted(built_site.rglob("*")):
        rel = path.relative_to(built_site).as_posix()
        if path.suffix == ".html":
            found += [f"{rel}: {u}" for u in
                      loaded_from_other_hosts(path.read_text(encoding="utf-8"))]
        elif path.suffix in (".css", ".js"):
            found += [f"{rel}: url({u})" for u in
                      CSS_URL.findall(path.read_text(encoding="utf-8", errors="replace"))]
    pages = list(built_site.rglob("*.html"))
    assert len(pages) >= len([p for p in PAGES if not p.startswith("generated/")])
    assert not found, "the site loads from other hosts (it must work offline):\n" + \
        "\n".join(found[:20])


def test_screenshot_server(tmp_path):
    """docs/scripts/screenshots.py's server (no browser needed): the page asked for with
    ``?measure`` gets the measuring script, the same page without it is served unchanged,
    and every request is logged with its status, so a file the site lacks shows up."""
    import urllib.error
    import urllib.request
    shots = _load_script("screenshots")
    (tmp_path / "page").mkdir()
    page = "<html><head></head><body><p>x</p></body></html>"
    (tmp_path / "page" / "index.html").write_text(page, encoding="utf-8")
    log = []
    server = shots.serve(str(tmp_path), log)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        def get(path):
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.read().decode("utf-8")
        measured = get("/page/?measure")
        assert measured == page.replace("</body>", shots.MEASURE + "</body>")
        assert f'm.name = "{shots.META}"' in measured
        assert get("/page/") == page
        with pytest.raises(urllib.error.HTTPError):
            get("/fonts/missing.woff")
    finally:
        server.shutdown()
    assert log == [("/page/", 200), ("/page/", 200), ("/fonts/missing.woff", 404)]


def test_presence_threshold_rules():
    """The two size rules of docs/scripts/presence_threshold.py (docs/unet.md) on a made-up
    stack of five slices: only small structures go, and the stack rule only at the ends; and
    its mean Dice is cmr.evaluate's. (Its confidence rule is cmr.predict's, tested there.)"""
    import numpy as np
    spec = importlib.util.spec_from_file_location(
        "presence_threshold", os.path.join(SCRIPTS, "presence_threshold.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    preds = np.zeros((5, 10, 10), dtype=np.int64)
    preds[0, :2, :2] = 1                    # 4 px of RV on the first slice
    preds[1, :6, :6] = 1                    # 36 px
    preds[2, :2, :3] = 1                    # 6 px, but in the middle of the stack
    preds[3, 5:, 5:] = 3                    # 25 px of LV
    preds[4, :1, :3] = 1                    # 3 px on the last slice
    names = [f"p1_frame01_slice{i:02d}" for i in range(1, 6)]
    area = mod.by_area(preds, 5)
    assert [int((area[i] > 0).sum()) for i in range(5)] == [0, 36, 6, 25, 0]
    stack = mod.by_stack(preds, names, 0.2)  # below 0.2 * 36 = 7.2 px, at the ends only
    assert [int((stack[i] > 0).sum()) for i in range(5)] == [0, 36, 6, 25, 0]
    assert np.array_equal(mod.by_stack(preds, names, 0.05), preds)      # 1.8 px: nothing goes
    from cmr.metrics import evaluate_masks
    target = np.roll(preds, 1, axis=2)
    assert mod.mean_dice(preds, target) == pytest.approx(
        evaluate_masks(preds, target)["dice"]["mean"], abs=1e-12)


def test_rescore_clean_sorts_seen_from_unseen():
    """docs/scripts/rescore_clean.py (docs/unet.md): a coursework slice counts as seen when it
    or its ED/ES partner matches a patient of the old training part; an acdc96 slice when its
    patient is a cmr/train patient or a copy of a training patient; and its mean Dice is the
    per-class mean over images, then over classes."""
    spec = importlib.util.spec_from_file_location(
        "rescore_clean", os.path.join(SCRIPTS, "rescore_clean.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    overlap = {"threshold": 0.9, "patients": {"train": ["patient003"]},
               "matches": [{"query": "cmr105", "patient": "patient031", "ncc": 0.95},
                           {"query": "cmr106", "patient": "patient031", "ncc": 0.85},
                           {"query": "cmr103", "patient": "patient012", "ncc": 0.98}]}

    def rec(name, rv=1.0):
        return {"name": name, "dice": {"RV": rv, "Myo": 0.5, "LV": 0.0}}
    val = [rec(n) for n in ("cmr103", "cmr104", "cmr105", "cmr106", "cmr111")]
    assert mod.seen_images(val, overlap, {"patient031"}, set()) == {"cmr105", "cmr106"}
    acdc = [rec("patient003_frame01_slice01"), rec("patient076_frame01_slice02"),
            rec("patient020_frame02_slice01")]
    assert mod.seen_images(acdc, overlap, {"patient074"}, {"patient076"}) == {
        "patient003_frame01_slice01", "patient076_frame01_slice02"}
    mean, per = mod.mean_dice([rec("a", 1.0), rec("b", 0.0)])
    assert per == [0.5, 0.5, 0.0] and mean == pytest.approx(1 / 3)


def github_slug(heading):
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped (``-`` and
    ``_`` kept), each space a hyphen (runs are not merged)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_slug():
    assert github_slug("One slice in two data sets") == "one-slice-in-two-data-sets"
    assert github_slug("`--preset cpu16-acdc` (width 16, + acdc96; old split)") == \
        "--preset-cpu16-acdc-width-16--acdc96-old-split"


def test_readme_links_resolve():
    """Every link of README.md resolves: ``](#anchor)`` names one of its headings (GitHub's
    anchors), and ``](path)`` / ``src="path"`` a file of the repository (the pages under docs/
    are checked by ``mkdocs build --strict``)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # not the shell comments
    headings = {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}
    anchors = re.findall(r"\]\(#([^)]+)\)", prose)
    files = [p for p in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"", prose)
             for p in p if p and "://" not in p]
    assert files, "README.md links to no file: the test checks nothing"
    broken = sorted(set(anchors) - headings)
    assert not broken, f"README.md links to headings it does not have: {broken}"
    missing = sorted(p for p in files if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, f"README.md links to files that do not exist: {missing}"
