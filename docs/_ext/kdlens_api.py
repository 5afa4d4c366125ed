"""Generate the API reference pages from the ``__all__`` of every public kdlens module.

At ``builder-inited`` this writes ``api/<module>.rst`` (git-ignored) for ``kdlens`` and each public
module or package directly under it (no leading underscore, a ``__all__``), so a name another
engineer adds to an ``__all__`` — or a new public package — appears in the reference without any
edit here. Each page holds the module's docstring, an autosummary table of its ``__all__``, then
every name documented once:

* functions and classes with ``autofunction`` / ``autoclass`` (numpydoc docstrings);
* data (dicts, tuples, constants) with ``py:data`` and the ``#:`` comment of the assignment in
  whichever submodule defines it — a public name without one is a build warning (an error
  under ``-W``), as is any public function or class without a docstring (numpydoc GL08);
* an object that several modules export is documented where it is defined first (in page order)
  and the other tables link there.

Public submodules of a package (``kdlens.sweep.spec``) get a section with their docstring so
``:mod:`` references to them resolve.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT_PACKAGE = "kdlens"
#: not API: the ``python -m kdlens`` entry point
SKIP = {"kdlens.__main__"}
#: private by name but documented: the column definitions of every tidy table the API reads and writes
EXTRA = ["kdlens._schema"]


def public_modules() -> list[str]:
    """``kdlens``, :data:`EXTRA` and every public module/package directly under ``kdlens`` that
    declares ``__all__``."""
    package = importlib.import_module(ROOT_PACKAGE)
    names = [ROOT_PACKAGE, *EXTRA]
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        name = f"{ROOT_PACKAGE}.{info.name}"
        if info.name.startswith("_") or name in SKIP:
            continue
        if hasattr(importlib.import_module(name), "__all__"):
            names.append(name)
    return names


def public_submodules(package: str) -> list[str]:
    module = importlib.import_module(package)
    if not hasattr(module, "__path__"):
        return []
    return [f"{package}.{i.name}" for i in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name)
            if not i.name.startswith("_")]


def _export(module, name: str):
    """The object ``module.name`` stands for. A lazily resolved name (``kdlens.distill``, the
    function, held in the module's ``_LAZY`` table) is looked up where it is defined: once the
    subpackage of the same name is imported, the attribute itself is that subpackage."""
    lazy = getattr(module, "_LAZY", {})
    if name in lazy:
        return getattr(importlib.import_module(lazy[name]), name)
    return getattr(module, name)


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or callable(obj) and hasattr(obj, "__wrapped__"):
        return "function"
    if inspect.ismodule(obj):
        return "module"
    return "data"


def _shared(obj) -> bool:
    """Whether two exports of an equal-identity ``obj`` are the same object (not an interned
    string or small number that two modules happen to share)."""
    return not isinstance(obj, str | int | float | bool | type(None))


def _attr_doc(module_name: str, name: str) -> list[str] | None:
    """The ``#:`` comment (or docstring after the assignment) of ``name`` in ``module_name`` or
    any of its submodules, private ones included (where re-exported data is defined)."""
    module = importlib.import_module(module_name)
    candidates = [module_name]
    lazy = getattr(module, "_LAZY", {})  # kdlens and kdlens.distill resolve names lazily
    if name in lazy:
        candidates.insert(0, lazy[name])
    if hasattr(module, "__path__") and module_name != ROOT_PACKAGE:
        candidates += [i.name for i in pkgutil.walk_packages(module.__path__, prefix=f"{module_name}.")
                       if i.name not in SKIP]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # noqa: BLE001 - a module without source (compiled) has no attr docs
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line is not None]
    return None


def _undocumented(obj) -> bool:
    """A public function or class whose own docstring is missing (not one inherited from a base)."""
    return not (obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None))


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def build_pages(outdir: Path) -> tuple[list[str], dict[int, str]]:
    """Write one page per public module.

    Returns
    -------
    pages : list of str
        Page names relative to the docs root.
    home : dict
        ``id(obj)`` -> the dotted name an exported object is documented under.
    """
    modules = public_modules()
    # an object is documented in the first module (page order, kdlens itself last) that exports it
    order = modules[1:] + modules[:1]
    home: dict[int, str] = {}
    for module_name in order:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = _export(module, name)
            if _shared(obj):
                home.setdefault(id(obj), f"{module_name}.{name}")
    pages = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        lines = [_heading(f"``{module_name}``", "="), f".. automodule:: {module_name}", "   :no-members:", "",
                 ".. rubric:: Contents", "", ".. autosummary::", "   :nosignatures:", ""]
        entries: dict[str, list[str]] = {"function": [], "class": [], "data": []}
        for name in sorted(module.__all__, key=str.lower):
            obj = _export(module, name)
            kind = _kind(obj)
            if kind == "module":
                continue
            target = home.get(id(obj)) if _shared(obj) else None
            here = f"{module_name}.{name}"
            if target and target != here:  # documented on another page: the table links there
                lines.append(f"   {target.removeprefix(module_name + '.')}")
                continue
            lines.append(f"   {name}")
            entries[kind].append(name)
            if kind in ("function", "class") and _undocumented(obj):
                logger.warning("public name %s has no docstring: write a numpydoc docstring", here)
        lines.append("")
        for kind, title in (("function", "Functions"), ("class", "Classes"), ("data", "Data")):
            if not entries[kind]:
                continue
            lines.append(_heading(title, "-"))
            for name in entries[kind]:
                if kind == "function":
                    lines += [f".. autofunction:: {name}", ""]
                elif kind == "class":
                    lines += [f".. autoclass:: {name}", "   :members:", ""]
                else:
                    doc = _attr_doc(module_name, name)
                    if doc is None:
                        logger.warning("public name %s.%s has no documentation: add a `#:` comment above its "
                                       "assignment", module_name, name)
                        doc = []
                    lines += [f".. py:data:: {name}", "", *(f"   {line}" for line in doc), ""]
        subs = public_submodules(module_name) if module_name != ROOT_PACKAGE else []
        subs = [sub for sub in subs if sub not in SKIP]
        if subs:
            lines.append(_heading("Modules", "-"))
            for sub in subs:
                lines += [f".. automodule:: {sub}", "   :no-members:", ""]
        text = "\n".join(lines).rstrip() + "\n"
        page = outdir / f"{module_name}.rst"
        if not page.is_file() or page.read_text(encoding="utf-8") != text:
            tmp = page.with_suffix(f".tmp{id(text)}")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(page)
        pages.append(f"api/{module_name}")
    for stale in outdir.glob("*.rst"):
        if f"api/{stale.stem}" not in pages:
            stale.unlink()
    return pages, home


def _generate(app: Sphinx) -> None:
    outdir = Path(app.srcdir) / "api"
    outdir.mkdir(exist_ok=True)
    _, app.kdlens_home = build_pages(outdir)


def _resolve(dotted: str):
    """The object (or module) a dotted name denotes, importing as far as needed; None if none."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _missing_reference(app: Sphinx, env, node, contnode):
    """Resolve a ``py`` reference written against where a name is defined (``kdlens.eval._tokens.
    collect_tokens``, a relative ``run_metrics`` in a submodule, a private ``kdlens.sweep._run``)
    to where the reference documents it: the object's page, or a private module's public package."""
    if node.get("refdomain") != "py" or node.get("reftarget", "").split(".")[0] in ("", "builtins"):
        return None
    target, module = node["reftarget"].lstrip("~."), node.get("py:module") or ""
    domain = env.get_domain("py")
    candidates = [target]
    while module:
        candidates.insert(0, f"{module}.{target}")
        module = module.rpartition(".")[0]
    for candidate in candidates:
        if not candidate.startswith(ROOT_PACKAGE):
            continue
        obj = _resolve(candidate)
        if obj is None:
            continue
        if inspect.ismodule(obj):  # a private module: its nearest documented (public) package
            name = obj.__name__
            while name and (name not in domain.modules or any(p.startswith("_") for p in name.split(".")[1:])):
                name = name.rpartition(".")[0]
            new, typ = name, "mod"
        else:
            new, typ = getattr(app, "kdlens_home", {}).get(id(obj)) if _shared(obj) else None, node["reftype"]
        if new and new != node["reftarget"]:
            return domain.resolve_xref(env, node["refdoc"], app.builder, typ, new, node, contnode)
    return None


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _generate)
    app.connect("missing-reference", _missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
