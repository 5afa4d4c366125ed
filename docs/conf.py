"""Sphinx configuration of the kdlens API reference (``make docs``; built with ``-W`` in the tests)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's kdlens, not an installed one
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kdlens  # noqa: E402

project = "kdlens"
author = "kdlens developers"
copyright = "kdlens developers"
release = version = kdlens.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "kdlens_api",
]
exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []

# every cross-reference must resolve (sphinx -n): kdlens names through the generated pages,
# outside libraries by their namespace below (no intersphinx: the build runs offline)
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(pandas|pd|numpy|np|torch|nn|transformers|accelerate|peft|scipy|statsmodels|matplotlib|"
               r"seaborn|yaml|sacrebleu|sentence_transformers|reasoning_gym|datasets|safetensors)(\..*)?"),
    (r"py:.*", r"(collections|typing|types|os|pathlib|argparse|dataclasses|enum|io|json|logging|"
               r"concurrent|subprocess|numbers|abc|contextlib|functools|random|re)(\..*)?"),
    (r"py:.*", r"(Path|PathLike|Any|Callable|Iterable|Iterator|Mapping|Sequence|MutableMapping|Tensor|DataFrame|"
               r"Series|ndarray|Axes|Figure|Module|PreTrainedModel|PreTrainedTokenizerBase|Accelerator|"
               r"MappingProxyType|Literal|Protocol|TypeVar|NoneType|ellipsis|Generator)"),
    (r"py:class", r"(str|int|float|bool|bytes|dict|list|tuple|set|frozenset|object|type|callable|None|"
                  r"optional|default|array-like|shape|iterable|sequence|mapping|path)"),
    (r"py:class", r".*\[.*"),  # a fragment of a subscripted builtin type (dict[str, ...]) in an annotation
    # private helpers that appear in public signatures only as annotations (documented where they are used)
    (r"py:class", r"kdlens\._http\.JSONClient"),
    (r"py:class", r"kdlens\.losses\._fused\.LMHead"),  # the fused path's head (weight, bias, vocabulary, soft-cap)
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False

numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# every public function and class has a docstring: checked by the kdlens_api extension on the names of
# each __all__ (numpydoc's own GL08 check would also flag data objects, which carry `#:` comments)

suppress_warnings: list[str] = []
