import subprocess
import sys


def test_import_kdlens_is_light():
    code = (
        "import sys, kdlens, kdlens._schema, kdlens._io;"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'pandas', 'scipy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_public_names_resolve_to_their_modules():
    import kdlens

    assert "load_model" in dir(kdlens)
    try:
        kdlens.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")
