"""The package's imports run one way: configuration and file I/O -> ops -> model -> data ->
shared evaluation -> the training engine -> the two experiments -> the command line. A module
may import from its own layer or below, never from above; and no library module starts a
script by its path (a sweep runs `python -m conrwkv`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "conrwkv"
LAYERS = [("config", "io"), ("ops",), ("model",), ("data",), ("eval",), ("train",), ("lm", "asr"),
          ("cli", "__main__")]
RANK = {top: rank for rank, tops in enumerate(LAYERS) for top in tops}


def top_of(module: str) -> str:
    """conrwkv.<top>.… -> <top>."""
    return module.split(".")[1]


def imports_of(path: Path) -> list[str]:
    """The conrwkv modules that `path` imports, as absolute names (relative imports resolved)."""
    here = ["conrwkv", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = here[:-1]          # a module's package; for __init__.py, the package itself
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("conrwkv."):
                found.append(module)
            elif module == "conrwkv":
                found += [f"conrwkv.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("conrwkv.")]
    return found


def test_every_top_level_part_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    tops.discard("__init__")
    assert tops == set(RANK), f"give {sorted(tops - set(RANK))} a layer in this test"


def test_no_import_runs_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for module in imports_of(path):
            if RANK[top_of(module)] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, "\n".join(upward)


def test_no_library_module_starts_a_script_by_path():
    """A module that starts processes names none of the repository's scripts."""
    scripts = {"train.py", "datanew.py", "dataset2.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if "subprocess" not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}:
            continue
        named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in scripts}
        if named:
            offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(named)}")
    assert not offenders, offenders
