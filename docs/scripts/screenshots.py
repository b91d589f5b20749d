"""Look at the documentation as a student sees it: build the site, serve it on this machine
and take full-page screenshots in a headless Chromium with no network.

    python docs/scripts/screenshots.py            # six default pages -> screenshots/*.png
    python docs/scripts/screenshots.py --out screenshots/2x unet layers/relu --scale 2

Needs mkdocs (``pip install ".[docs]"``) and a Chromium (``apt-get install chromium``, or
``--chromium PATH``); it is a docs tool, not a dependency of the library.

Each page is opened twice:

1. **measure**: the served page gets a small script that waits for MathJax to finish, then
   writes into a ``<meta>``, which ``--dump-dom`` prints: the page's height; how many
   formulas MathJax typeset, for how many on the page (twice as many: each formula was
   typeset twice), how many still have their screen-reader MathML and how many are left as
   raw TeX; what sticks out of the content column (code blocks, tables and displayed
   formulas wider than their box, named by the heading above them); and how many
   characters a code line holds;
2. **shoot**: the unmodified page, in a window exactly that tall, ``--screenshot``.

Chromium runs with ``--host-resolver-rules`` that resolve no host but 127.0.0.1, so anything
the site would load from the internet fails as it would offline; the local server records
every request, and the script reports any file it could not serve (a missing font, say).
"""
import argparse
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = ("home", "layers/conv2d", "losses/cross_entropy", "optimizers", "unet", "cuda")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
META = "screenshot-measure"
TIME_BUDGET_MS = 15000          # virtual time: MathJax has finished long before
MAX_HEIGHT = 32000              # taller pages are cut there (and the script says so)

# Injected into the page in the measuring run only.
MEASURE = """<script>
window.addEventListener("load", function () {
  var mj = window.MathJax && MathJax.startup && MathJax.startup.promise;
  (mj || Promise.resolve()).then(function () {
    // the elements of `selector` wider than their box, each named by the heading above it
    var wide = function (selector) {
      var found = [], heading = "(top)";
      var all = document.querySelectorAll(".md-content h1, .md-content h2, .md-content h3, "
                                          + selector);
      Array.prototype.forEach.call(all, function (e) {
        if (/^H[123]$/.test(e.tagName)) {
          heading = e.textContent.replace(/\u00b6$/, "").trim();
        } else if (e.scrollWidth > e.clientWidth + 1) {
          found.push(heading);
        }
      });
      return found;
    };
    var columns = 0, code = document.querySelector(".md-content pre > code");
    if (code) {              // how many monospace characters fit on a line of a code block
      var probe = document.createElement("span"), style = getComputedStyle(code);
      probe.textContent = "0".repeat(100);
      code.appendChild(probe);
      columns = Math.floor((code.clientWidth - parseFloat(style.paddingLeft)
                            - parseFloat(style.paddingRight)) / (probe.offsetWidth / 100));
      code.removeChild(probe);
    }
    var m = document.createElement("meta");
    m.name = "%s";
    m.content = JSON.stringify({
      code_columns: columns,
      height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
      formulas: document.querySelectorAll(".arithmatex").length,
      maths: document.querySelectorAll("mjx-container").length,
      mathml: document.querySelectorAll("mjx-container > mjx-assistive-mml").length,
      raw_tex: document.querySelectorAll(".arithmatex:not(:has(mjx-container))").length,
      wide_code: wide("pre > code"),
      wide_tables: wide(".md-typeset__scrollwrap"),
      wide_maths: wide("mjx-container[display]")
    });
    document.head.appendChild(m);
  });
});
</script>""" % META


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site; records each request; injects MEASURE into pages whose query
    string is ``?measure``."""

    def __init__(self, *args, log, **kwargs):
        self.requests = log
        super().__init__(*args, **kwargs)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if query == "measure" and (path.endswith("/") or path.endswith(".html")):
            file = self.translate_path(path)
            if os.path.isdir(file):
                file = os.path.join(file, "index.html")
            if os.path.exists(file):
                with open(file, encoding="utf-8") as f:
                    body = f.read().replace("</body>", MEASURE + "</body>").encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path.partition("?")[0], int(code)))

    def log_message(self, *args):
        pass


def build_site(folder):
    """``mkdocs build --strict`` into ``folder``."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                    "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", folder],
                   cwd=ROOT, env=env, check=True)


def serve(folder, log):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port), in a daemon thread."""
    handler = functools.partial(Handler, directory=folder, log=log)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def find_chromium(name):
    tried = [name] if name else list(BROWSERS)
    for candidate in tried:
        path = shutil.which(candidate)
        if path:
            return path
    sys.exit(f"screenshots.py: no Chromium found (tried {', '.join(tried)}); "
             "install one (apt-get install chromium) or pass --chromium PATH")


def chromium(binary, width, height, *args, scale=1):
    """Run headless Chromium once, in a fresh profile (nothing cached from an earlier run),
    with no network but 127.0.0.1; return its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-first-run", "--no-default-browser-check",
                   "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--force-device-scale-factor={scale}",
                   f"--virtual-time-budget={TIME_BUDGET_MS}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        sys.exit(f"screenshots.py: chromium failed ({result.returncode}):\n"
                 f"{result.stderr[-2000:]}")
    return result.stdout


def measure(binary, width, url):
    """The page's height and what overflows, as the injected script found them."""
    dom = chromium(binary, width, 800, "--dump-dom", url + "?measure")
    found = re.search(rf'<meta name="{META}" content="([^"]*)"', dom)
    if not found:
        sys.exit(f"screenshots.py: {url} did not finish loading within {TIME_BUDGET_MS} ms "
                 "of virtual time")
    return json.loads(html.unescape(found.group(1)))


def shoot(binary, base, page, out, width, scale):
    """Measure one page, screenshot it whole into ``out``; return what to print about it."""
    home = page in ("home", "index")
    url = base + ("" if home else page.strip("/") + "/")
    facts = measure(binary, width, url)
    height = min(facts["height"], MAX_HEIGHT)
    png = os.path.join(out, ("home" if home else page.strip("/").replace("/", "_")) + ".png")
    chromium(binary, width, height, f"--screenshot={os.path.abspath(png)}", url, scale=scale)
    cut = f" (cut from {facts['height']} px)" if facts["height"] > MAX_HEIGHT else ""
    lines = [f"{png}: {width} x {height} CSS px{cut}; {facts['maths']} typeset for "
             f"{facts['formulas']} formulas ({facts['mathml']} with MathML for screen "
             f"readers), {facts['raw_tex']} left as TeX; a code line holds "
             f"{facts['code_columns']} characters"]
    for kind in ("code", "tables", "maths"):
        where = Counter(facts[f"wide_{kind}"])
        if where:
            lines.append(f"    {sum(where.values())} {kind} wider than the column, under: "
                         + "; ".join(f"{h} ({n})" if n > 1 else h for h, n in where.items()))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", default=list(PAGES),
                        help=f"pages by their path in the site (default: {' '.join(PAGES)})")
    parser.add_argument("--out", default="screenshots",
                        help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280,
                        help="window width in CSS pixels (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1,
                        help="device pixels per CSS pixel; 2 is a high-density laptop screen "
                             "(default: %(default)s)")
    parser.add_argument("--chromium", help="the Chromium binary (default: the first on PATH)")
    args = parser.parse_args(argv)
    binary = find_chromium(args.chromium)
    os.makedirs(args.out, exist_ok=True)
    log = []
    with tempfile.TemporaryDirectory() as tmp:
        site = os.path.join(tmp, "site")
        build_site(site)
        server = serve(site, log)
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            for page in args.pages:
                print("\n".join(shoot(binary, base, page, args.out, args.width, args.scale)))
        finally:
            server.shutdown()
    missing = sorted({path for path, code in log if code >= 400})
    fonts = {path for path, code in log if code == 200 and path.endswith((".woff", ".woff2"))}
    print(f"served {len(log)} requests from 127.0.0.1, {len(fonts)} different font files"
          + (f"; not found: {', '.join(missing)}" if missing else "; every file was found"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
