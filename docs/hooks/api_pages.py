"""MkDocs hook: the API reference, generated from the package's own list of public names.

Every name that ``import hf_sparse`` exports (``hf_sparse._LAZY``, public name -> defining subpackage) gets a
mkdocstrings block on the page of its subpackage, and the subpackages exported as modules (``hf_sparse.flops``,
``hf_sparse.ift``, ``hf_sparse.kernels``) get every name of their own ``__all__``. A public name added to the
package therefore appears in the reference without editing the docs, and one whose docstring or reference does
not render fails ``mkdocs build --strict``. ``tests/test_docs.py`` checks the coverage without building.
"""

from __future__ import annotations

import importlib
from typing import Dict, List

# Page titles of the subpackages; one missing here falls back to its module name.
TITLES = {
    "config": "Configs",
    "structure": "Mask structure",
    "layers": "Sparse layers",
    "heads": "Heads",
    "targets": "Target modules",
    "patching": "Sparsifying a model",
    "ift": "Sparse-IFT",
    "algorithms": "Algorithms",
    "lr_rule": "Sparse learning rate",
    "controller": "Controller",
    "flops": "FLOPs",
    "regularizers": "Regularizers",
    "metrics": "Metrics",
    "kernels": "Kernels",
    "checkpoint": "Checkpoints and the Hub",
    "trainer": "Trainer",
    "reporting": "Reports",
}


def public_names() -> List[str]:
    """Every name in ``hf_sparse.__all__``."""
    return list(importlib.import_module("hf_sparse").__all__)


def api_sections() -> Dict[str, List[str]]:
    """Subpackage -> the public names documented on its page, in the package's layer order."""
    pkg = importlib.import_module("hf_sparse")
    sections: Dict[str, List[str]] = {}
    for name, module in pkg._LAZY.items():
        sections.setdefault(module, []).append(name)
    for module in pkg.__all__:
        if module in pkg._SUBMODULES:  # an exported subpackage: its whole public surface
            sub = importlib.import_module(f"hf_sparse.{module}")
            names = sections.setdefault(module, [])
            names.extend(n for n in getattr(sub, "__all__", ()) if n not in names)
    order = list(TITLES) + sorted(set(sections) - set(TITLES))
    return {m: sorted(sections[m], key=str.lower) for m in order if m in sections}


def documented_names() -> List[str]:
    """The ``hf_sparse.__all__`` names that the generated pages document (``__version__`` is on the index)."""
    sections = api_sections()
    on_pages = {n for names in sections.values() for n in names} | set(sections) | {"__version__"}
    return [n for n in public_names() if n in on_pages]


def page_markdown(module: str, names: List[str]) -> str:
    title = TITLES.get(module, module)
    lines = [f"# {title}", "", f"`hf_sparse.{module}`", "",
             f"::: hf_sparse.{module}", "    options:", "      members: false", "      show_root_heading: false", ""]
    for name in names:
        lines += [f"::: hf_sparse.{module}.{name}", ""]
    return "\n".join(lines)


def index_markdown(sections: Dict[str, List[str]]) -> str:
    version = importlib.import_module("hf_sparse.version").__version__
    lines = ["# API reference", "",
             f"Generated from the docstrings of hf_sparse {version} (`hf_sparse.__version__`). "
             "Everything below is importable from `hf_sparse` directly (`hf_sparse.SparsityConfig`) and from "
             "its subpackage (`hf_sparse.config.SparsityConfig`); `import hf_sparse` is lazy, a name loads its "
             "subpackage on first use.", ""]
    for module, names in sections.items():
        lines.append(f"- [{TITLES.get(module, module)}]({module}.md): "
                     + ", ".join(f"[`{n}`][hf_sparse.{module}.{n}]" for n in names))
    return "\n".join(lines) + "\n"


def on_config(config):
    sections = api_sections()
    pages = [{"Overview": "api/index.md"}] + [{TITLES.get(m, m): f"api/{m}.md"} for m in sections]
    config["nav"] = [entry for entry in config["nav"] if not (isinstance(entry, dict) and "API reference" in entry)]
    config["nav"].append({"API reference": pages})
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    sections = api_sections()
    files.append(File.generated(config, "api/index.md", content=index_markdown(sections)))
    for module, names in sections.items():
        files.append(File.generated(config, f"api/{module}.md", content=page_markdown(module, names)))
    return files
