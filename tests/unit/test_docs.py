"""The API reference: builds with warnings as errors, holds every public name, renders the formulas.

The build (``make docs`` runs the same command) takes about 20 s of CPU: it imports every kdlens
module, as autodoc must. It needs the ``docs`` extra (``pip install -e '.[docs]'``, part of
``make setup``); without it these tests fail rather than skip, since CI must build the docs.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.xdist_group("docs")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("docs") / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-n", "-W", "--keep-going", "-q",
                           str(DOCS), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return out, proc


def _ids(html: str) -> set[str]:
    return set(re.findall(r'id="(kdlens[\w.]*)"', html))


def test_docs_build_with_warnings_as_errors(built):
    out, proc = built
    assert "No module named sphinx" not in proc.stderr, "install the docs extra: pip install -e '.[docs]'"
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.strip() == "", proc.stderr[-4000:]  # -q: any output is a warning
    assert (out / "index.html").is_file()


def test_every_public_name_appears_in_the_reference(built):
    out, _ = built
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from kdlens_api import public_modules
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    modules = public_modules()
    # a page per package the issue names (and any public module added since)
    assert {"kdlens", "kdlens.losses", "kdlens.distill", "kdlens.config", "kdlens.data", "kdlens.models",
            "kdlens.eval", "kdlens.analysis", "kdlens.plots", "kdlens.report", "kdlens.sweep", "kdlens.teacher",
            "kdlens.citations"} <= set(modules)
    pages = {m: (out / "api" / f"{m}.html").read_text(encoding="utf-8") for m in modules}
    documented = set().union(*map(_ids, pages.values()))
    missing = []
    for module_name, html in pages.items():
        for name in importlib.import_module(module_name).__all__:
            here = f"{module_name}.{name}"
            # documented on its own page, or listed there with a link to the page that documents it
            links = re.findall(rf'href="[^"]*#(kdlens[\w.]*\.{re.escape(name)})"', html)
            if here not in documented and not any(link in documented for link in links):
                missing.append(here)
    assert missing == []


def test_formulas_render_as_math_and_references_are_named(built):
    out, _ = built
    losses = (out / "api" / "kdlens.losses.html").read_text(encoding="utf-8")
    analysis = (out / "api" / "kdlens.analysis.html").read_text(encoding="utf-8")
    for html in (losses, analysis):
        assert ":math:" not in html and "\\(" in html  # every role became a MathJax span
    # the forward KL definition and the Holm adjustment, as typeset math
    assert re.search(r'<span class="math[^"]*">\\\(\\mathrm\{KL\}\(p\\\|q\) = \\sum_v', losses)
    assert "(m - j + 1)" in analysis and "holm1979simple" in analysis and "hinton2015distilling" in losses
    citations = (out / "api" / "kdlens.citations.html").read_text(encoding="utf-8")
    assert 'id="kdlens.citations.REFERENCES"' in citations and 'id="kdlens.citations.cite"' in citations


def test_names_added_to_an_all_appear_without_editing_the_docs(tmp_path, monkeypatch):
    """The pages are generated from ``__all__`` at build time: a new public function shows up, and a
    public name without documentation is a build warning (an error under -W)."""
    import kdlens.analysis

    monkeypatch.syspath_prepend(str(DOCS / "_ext"))
    import kdlens_api

    warnings = []
    monkeypatch.setattr(kdlens_api.logger, "warning", lambda msg, *args: warnings.append(msg % args))

    def brand_new_test(data=None):
        """A statistical test another engineer just added."""

    def undocumented(data=None):
        pass

    brand_new_test.__module__ = undocumented.__module__ = "kdlens.analysis.stats"
    monkeypatch.setattr(kdlens.analysis, "brand_new_test", brand_new_test, raising=False)
    monkeypatch.setattr(kdlens.analysis, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(kdlens.analysis, "NEW_TABLE", {"a": 1}, raising=False)
    monkeypatch.setattr(kdlens.analysis, "__all__", [*kdlens.analysis.__all__, "brand_new_test", "undocumented",
                                                     "NEW_TABLE"])
    pages, home = kdlens_api.build_pages(tmp_path)
    page = (tmp_path / "kdlens.analysis.rst").read_text()
    assert ".. autofunction:: brand_new_test" in page and "   brand_new_test" in page
    assert "api/kdlens.analysis" in pages and home[id(brand_new_test)] == "kdlens.analysis.brand_new_test"
    assert "public name kdlens.analysis.undocumented has no docstring: write a numpydoc docstring" in warnings
    assert any("kdlens.analysis.NEW_TABLE has no documentation" in w for w in warnings)
    # an object exported by two modules is documented once, where it is first found, and linked from the other
    top = (tmp_path / "kdlens.rst").read_text()
    assert "   analysis.agreement" in top and ".. autofunction:: agreement" not in top
