// MathJax settings for pymdownx.arithmatex (generic mode): \( \) inline, \[ \] display.
// MathJax itself (docs/javascripts/mathjax/, vendored) is loaded after this file.
window.MathJax = {
  tex: {
    inline: [["\\(", "\\)"]],
    display: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// Material's instant navigation swaps pages without a reload: typeset each new page.
// document$ also emits once for the page first loaded, which MathJax's own startup already
// typesets: typesetting it again would render each formula twice (and replace the MathML
// kept for screen readers), so that first emission is skipped.
if (typeof document$ !== "undefined") {
  let firstLoad = true;
  document$.subscribe(() => {
    if (firstLoad) {
      firstLoad = false;
      return;
    }
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
