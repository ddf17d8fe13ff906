"""The dependency direction of CONVENTIONS.md, and the install layout."""

import subprocess
import sys


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    return set(out.split())


def test_kernels_do_not_import_transformers():
    mods = _loaded_after("import cltx.kernels; cltx.kernels.salt_fit; cltx.kernels.clo_loss")
    assert "transformers" not in mods
    assert "typer" not in mods


def test_library_does_not_import_ui():
    mods = _loaded_after("import cltx, cltx.models, cltx.progress")
    assert "typer" not in mods and "rich" not in mods


def test_no_bare_top_level_kernels_or_cli():
    code = "import importlib.util as u; print(u.find_spec('kernels'), u.find_spec('cli'))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True, cwd="/")
    assert out.split() == ["None", "None"]


def test_cli_help_is_fast_and_light():
    mods = _loaded_after("from cltx.cli.main import app")
    assert "torch" not in mods and "transformers" not in mods


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "cltx.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("cltx ")
