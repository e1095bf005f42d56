"""The tree reads as it is meant to: scripts at the top, the library in
layers below them, each module importing only from lower layers."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train", "embed_fingerprints", "detect_fingerprints", "evaluate", "transferability", "secrecy", "attacks",
           "fid", "demo"}
# The layers of fingerprinting/__init__.py's docstring, lowest first.
LAYERS = [
    {"errors", "bits", "modulation", "resizing", "sample_images"},
    # forgery's copy estimates blur with modulation's Gaussian; crop_search's boxes stop where resizing's square does
    {"records", "devices", "forgery", "crop_search"},
    {"checkpoints", "data"},
    {"perturbations", "evaluation", "steganalysis", "api", "folders", "generators"},
    {"removal", "training", "embedding", "detection"},
    {"attack_suite", "file_changes"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def package_modules():
    for folder, _, files in os.walk(os.path.join(ROOT, "fingerprinting")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.path.join(ROOT, "fingerprinting"))
                module = relative[:-3].replace(os.sep, ".").replace(".__init__", "")
                yield module.split(".")[0] if module != "__init__" else None, path


def imported(path):
    """Top-level names this file imports from the repository: fingerprinting's modules and the root files."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "fingerprinting":
                names.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
            else:
                names.add(parts[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_the_top_level_holds_the_scripts_and_the_two_published_modules():
    top = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert top == SCRIPTS | {"models", "utils"}


def test_no_library_module_imports_a_script_and_every_import_goes_down_the_layers():
    for module, path in package_modules():
        names = imported(path)
        assert not names & SCRIPTS, (path, names & SCRIPTS)
        if module is None or module not in RANK:
            assert module is None, f"{path}: a module missing from the layers"
            continue
        for name in names & set(RANK):
            if name != module:
                assert RANK[name] < RANK[module], f"{module} (layer {RANK[module]}) imports {name} ({RANK[name]})"


def test_models_stays_pure():
    assert imported(os.path.join(ROOT, "models.py")) <= {"math", "torch"}
