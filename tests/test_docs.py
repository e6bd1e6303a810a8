"""The documentation site covers the package: every public name has an API entry, every nav page exists.

``mkdocs build --strict`` (run by ``.ci/run``) renders the pages; these checks need neither mkdocs nor a
build, so the test suite catches a public name or a page that the docs would miss.
"""

import importlib
import importlib.util
import re
from pathlib import Path

import yaml

import hf_sparse

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("api_pages", DOCS / "hooks" / "api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_files(entries):
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from _nav_files(value)
        else:
            yield value


def test_every_public_name_is_in_the_api_reference():
    hook = _hook()
    assert hook.documented_names() == list(hf_sparse.__all__)
    documented = {n for names in hook.api_sections().values() for n in names}
    assert set(hf_sparse._LAZY) <= documented


def test_api_entries_resolve_where_the_pages_point():
    # Each entry is rendered as `hf_sparse.<subpackage>.<name>`: the name must exist there, and be the same
    # object `hf_sparse.<name>` gives.
    for module, names in _hook().api_sections().items():
        sub = importlib.import_module(f"hf_sparse.{module}")
        for name in names:
            assert hasattr(sub, name), f"hf_sparse.{module}.{name} does not exist"
            if name in hf_sparse._LAZY:
                assert getattr(hf_sparse, name) is getattr(sub, name)


def test_generated_page_lists_every_name():
    hook = _hook()
    page = hook.page_markdown("config", ["SparsityConfig", "DynamicSparsityConfig"])
    assert "::: hf_sparse.config.SparsityConfig" in page and "::: hf_sparse.config.DynamicSparsityConfig" in page
    index = hook.index_markdown({"config": ["SparsityConfig"]})
    assert "[`SparsityConfig`][hf_sparse.config.SparsityConfig]" in index


def test_nav_pages_exist_and_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = list(_nav_files(config["nav"]))
    assert nav and all((DOCS / page).is_file() for page in nav), [p for p in nav if not (DOCS / p).is_file()]
    written = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert written == set(nav)


def test_getting_started_has_the_readme_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    section = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(commands) >= 2
    for command in commands[:2]:
        assert command in page
