"""Every notebook executes end to end on its smoke setting (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
# the notebooks that read the paper's released results
NEEDS_SHARED_DATA = {"02_paper_statistics.ipynb"}
#: the notebooks whose full setting reads the published lab grid, and where their smoke sweep is written
SWEEP_NOTEBOOKS = {"03_agreement_fidelity.ipynb": "agreement_fidelity", "04_sigma_tau.ipynb": "sigma_tau",
                   "05_teacher_awareness.ipynb": "teacher_awareness"}


def _code(book) -> list[str]:
    return [cell.source for cell in book.cells if cell.cell_type == "code"]


def test_the_six_notebooks_are_there():
    assert NAMES == ["01_divergences.ipynb", "02_paper_statistics.ipynb", "03_agreement_fidelity.ipynb",
                     "04_sigma_tau.ipynb", "05_teacher_awareness.ipynb", "06_meta_distillation.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_shape(name):
    """Opens with the claim, has a parameters cell, defines nothing, ends on a verdict; committed executed in order
    in its full setting (01 the divergences, 02 the paper's released results, 03-05 the lab grid, 06 the meta
    grid), without errors or machine paths, so a reader sees the numbers on the repository page."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(book)
    assert book.cells[0].cell_type == "markdown" and "claim" in book.cells[0].source.lower()
    params = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SMOKE =" in params[0].source
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        f"{name}: commit it executed in order (jupyter nbconvert --execute --inplace, full setting)"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.get("output_type") == "error"], f"{name}: committed with an error"
    assert "/tmp/" not in str(outputs) and "/work/" not in str(outputs), f"{name}: machine paths in the outputs"
    for source in _code(book):
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda), \
                f"{name} defines {getattr(node, 'name', 'a lambda')}: notebooks call kdlens and define nothing"
    assert book.cells[-2].cell_type == "markdown" and book.cells[-2].source.strip() == "## Verdict"
    assert "print(" in book.cells[-1].source
    if name not in NEEDS_SHARED_DATA:  # 02 reads the released results: the same numbers in both settings
        assert "if SMOKE:" in book.cells[-1].source, f"{name}: the smoke verdict must say it proves nothing"


@pytest.mark.parametrize("name", sorted(SWEEP_NOTEBOOKS))
def test_the_committed_outputs_come_from_the_full_lab_grid(name):
    """03-05 show the published lab results on the repository page: the whole grid, its verdicts and figures."""
    from kdlens.sweep import read_results

    published = NOTEBOOKS.parent / "analyses" / "results" / "lab_grid"
    n_runs = len(read_results(published / "runs.parquet"))
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    verdict = "".join(out.get("text", "") for out in book.cells[-1].outputs if out.get("output_type") == "stream")
    assert f"Data: the whole grid: {n_runs} of {n_runs} runs." in verdict
    assert "Smoke run" not in verdict and "lab_chain@test" in "".join(out.get("text", "") for out in outputs) + verdict
    assert any(verdict.count(word) for word in ("supported", "contradicted"))  # at least one decided verdict
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert figures, f"{name}: the committed notebook shows its figures"
    assert "/tmp/" not in "".join(str(out) for out in outputs)  # no machine-specific paths in the outputs


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_its_smoke_setting(name, monkeypatch, tmp_path, request):
    if name in NEEDS_SHARED_DATA:
        request.getfixturevalue("kd_data")  # skips when ../shared is absent
    monkeypatch.setenv("KDLENS_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("KDLENS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    verdict = "".join(out.get("text", "") for out in book.cells[-1].outputs if out.get("output_type") == "stream")
    assert verdict.strip(), f"{name}: the verdict cell printed nothing"
    if name in NEEDS_SHARED_DATA:  # real data: the verdict carries the paper's numbers
        assert "KD improves the student over its SFT baseline" in verdict and "paradox_test:" in verdict
        # the paper's 11 KD rows cannot show that agreement does not go with the gain: on the authors'
        # unit (no verdict) the interval spans both; the 11 rows come from 6 students, too few clusters
        assert ("As published (no verdict): agreement does not go with improvement (|rho| < 0.3: the paradox) "
                "(rho = -0.51, 95% CI [-0.86, 0.17], n = 11 rows") in verdict
        assert ("agreement does not go with improvement (|rho| < 0.3: the paradox): inconclusive (6 student "
                "clusters < 10: too few for a cluster-adjusted interval, no verdict; rho = -0.51, n = 6 student "
                "clusters (11 rows") in verdict
        assert "KD improves the student over its SFT baseline (SESOI 2 points), method KD: inconclusive " \
               "(mean improvement = +2.49 points, 95% CI [-0.08, +5.05], n = 6 students (mean over their rows), " \
               "one-sided p = 0.0277 vs 0.025" in verdict
    else:
        assert "say nothing about distillation" in verdict or "mean nothing" in verdict
    errors = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors




def _execute(name: str) -> tuple[str, list]:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    verdict = "".join(out.get("text", "") for out in book.cells[-1].outputs if out.get("output_type") == "stream")
    errors = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    return verdict, errors


@pytest.mark.parametrize("name", sorted(SWEEP_NOTEBOOKS))
def test_full_setting_reads_the_published_tables_without_training(name, monkeypatch, tmp_path):
    """The full setting reads the published tables, whole or partial, and trains nothing (a CPU grid never)."""
    from kdlens.sweep import publish_sweep, run_sweep

    monkeypatch.setenv("KDLENS_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("KDLENS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # full_results trains only where CUDA is
    monkeypatch.delenv("CI", raising=False)
    sweep_dir = tmp_path / SWEEP_NOTEBOOKS[name]
    # 05 gets a partial grid, as after a stopped session: the SFT baseline and one KD run of one teacher
    run_sweep(_smoke_spec(name, monkeypatch), output_dir=sweep_dir,
              max_runs=2 if name == "05_teacher_awareness.ipynb" else None)
    publish_sweep(sweep_dir, tmp_path / "published")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "published").iterdir()}
    runs_dir = NOTEBOOKS.parent / "runs"
    trained_before = sorted(runs_dir.rglob("done")) if runs_dir.is_dir() else []
    monkeypatch.setenv("KDLENS_NOTEBOOK_SMOKE", "0")
    monkeypatch.setenv("KDLENS_NOTEBOOK_RESULTS", str(tmp_path / "published"))
    verdict, errors = _execute(name)
    assert not errors, errors
    assert "say nothing about distillation" not in verdict
    if name == "05_teacher_awareness.ipynb":
        assert "Data: a partial grid: 2 of 6 runs" in verdict and "not testable" in verdict, verdict
    else:
        assert "Data: the whole grid" in verdict
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "published").iterdir()} == before
    assert (sorted(runs_dir.rglob("done")) if runs_dir.is_dir() else []) == trained_before  # nothing was trained


def _smoke_spec(name: str, monkeypatch, key: str = "SMOKE_SPEC") -> dict:
    """The notebook's own smoke spec (its SMOKE_SPEC), read by running its set-up cells."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    namespace: dict = {}
    monkeypatch.chdir(NOTEBOOKS)
    for cell in book.cells[1:3]:  # the parameters cell and the imports-and-specs cell
        exec(compile(cell.source, name, "exec"), namespace)
    return namespace[key]


def test_the_meta_distillation_full_setting_reads_its_published_tables_without_training(monkeypatch, tmp_path):
    """06 reads two published folders (the MPDistil ablation grid and MetaDistil), whole or partial, and trains
    nothing."""
    from kdlens.sweep import publish_sweep, run_sweep

    name = "06_meta_distillation.ipynb"
    monkeypatch.setenv("KDLENS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # full_results trains only where CUDA is
    monkeypatch.delenv("CI", raising=False)
    specs = _smoke_spec(name, monkeypatch, key="SMOKE_SPECS")
    assert list(specs) == ["meta_mpdistil", "meta_metadistil"]
    for spec_name, spec in specs.items():
        # MetaDistil stops after seed 0 (its SFT, word_kd and MetaDistil runs), as a session cut short does
        run_sweep(spec, output_dir=tmp_path / spec_name, max_runs=3 if spec_name == "meta_metadistil" else None)
        publish_sweep(tmp_path / spec_name, tmp_path / "published" / spec_name)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "published").rglob("*")}
    runs_dir = NOTEBOOKS.parent / "runs"
    trained_before = sorted(runs_dir.rglob("done")) if runs_dir.is_dir() else []
    monkeypatch.setenv("KDLENS_NOTEBOOK_SMOKE", "0")
    monkeypatch.setenv("KDLENS_NOTEBOOK_RESULTS", str(tmp_path / "published"))
    verdict, errors = _execute(name)
    assert not errors, errors
    assert "say nothing about distillation" not in verdict
    assert "meta_mpdistil: the whole grid: 10 of 10 runs" in verdict
    assert "meta_metadistil: a partial grid: 3 of 6 runs" in verdict
    # one sentence per task of the MPDistil arm, one per ablated switch, and MetaDistil's with one seed
    assert verdict.count("the student beats its teacher on lab_") == 4
    for switch in ("mpdistil.curriculum = uniform lowers", "mpdistil.curriculum = none lowers",
                   "mpdistil.meta_teacher = False lowers", "mpdistil.meta_loss = competitive changes"):
        assert verdict.count(switch) == 1, switch
    assert "method = metadistil raises accuracy against method = word_kd" in verdict
    assert "n = 1 run pair" in verdict  # the partial MetaDistil grid: one seed, no interval
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "published").rglob("*")} == before
    assert (sorted(runs_dir.rglob("done")) if runs_dir.is_dir() else []) == trained_before  # nothing was trained


def test_the_committed_meta_distillation_outputs_come_from_its_published_tables():
    """06 shows the published meta grids on the repository page: their run counts, verdicts and figures."""
    from kdlens.sweep import read_results

    book = nbformat.read(NOTEBOOKS / "06_meta_distillation.ipynb", as_version=4)
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    verdict = "".join(out.get("text", "") for out in book.cells[-1].outputs if out.get("output_type") == "stream")
    for spec_name in ("meta_mpdistil", "meta_metadistil"):
        status = read_results(NOTEBOOKS.parent / "analyses" / "results" / spec_name / "runs.parquet")["status"]
        done = int(status.isin(["published", "evaluated"]).sum())
        assert f"{spec_name}: {'the whole grid' if done == len(status) else 'a partial grid'}: {done} of " \
               f"{len(status)} runs" in verdict
    assert "Smoke run" not in verdict and "n = 5 seeds" in verdict
    assert any(verdict.count(word) for word in ("supported", "contradicted"))  # at least one decided verdict
    assert [out for out in outputs if "image/png" in out.get("data", {})], "06 shows its heatmap"
    assert "/tmp/" not in "".join(str(out) for out in outputs)  # no machine-specific paths in the outputs
