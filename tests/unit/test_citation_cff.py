"""CITATION.cff: valid Citation File Format 1.2.0, in step with the package and with kdlens.citations."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_citation_cff_parses_with_the_required_keys_and_matches_the_package():
    import kdlens
    from kdlens.citations import KDLENS_KEY, REFERENCES

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    # CFF 1.2.0 requires cff-version, message, title and authors (each a person or an entity with a name)
    assert cff["cff-version"] == "1.2.0"
    assert {"cff-version", "message", "title", "authors"} <= set(cff)
    assert cff["message"].strip() and cff["type"] in ("software", "dataset")
    for author in cff["authors"]:
        assert author.get("name") or author.get("family-names"), author
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert cff["version"] == kdlens.__version__ == project["version"]
    assert cff["license"] == project["license"]
    # the registry's entry for kdlens itself says the same
    ref = REFERENCES[KDLENS_KEY]
    assert ref.title == cff["title"] and f"version {cff['version']}" in ref.venue
    paper = REFERENCES["ramesh2025generalization"]
    (cited,) = cff["references"]
    assert cited["title"] == paper.title and cited["year"] == paper.year
    assert [f"{a['family-names']}, {a['given-names']}" for a in cited["authors"]] == list(paper.authors)
    assert f"{cited['start']}-{cited['end']}" == paper.pages
