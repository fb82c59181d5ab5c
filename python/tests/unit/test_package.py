"""What `pip install ./python` installs: the type stubs match the extension, the package is
marked typed, and the extension is the stable-ABI build."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import harvest
from harvest import _native


def _stub() -> ast.Module:
    path = Path(harvest.__file__).with_name("_native.pyi")
    assert path.is_file(), f"the stubs were not installed: {path}"
    return ast.parse(path.read_text())


def test_the_stubs_name_exactly_what_the_extension_has() -> None:
    stub = _stub()
    functions = {n.name for n in stub.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in stub.body if isinstance(n, ast.ClassDef)}
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert functions | set(classes) == public, (functions | set(classes)) ^ public
    for name, node in classes.items():
        stubbed = {n.name for n in node.body if isinstance(n, ast.FunctionDef)} - {"__init__"}
        actual = {n for n in dir(getattr(_native, name)) if not n.startswith("_")}
        assert stubbed == actual, (name, stubbed ^ actual)


def test_the_stubs_keyword_arguments_are_the_extensions() -> None:
    # PyO3 publishes each function's signature in __text_signature__.
    stub = _stub()
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            actual = inspect.signature(getattr(_native, node.name))
            stubbed = [a.arg for a in node.args.args]
            assert stubbed == list(actual.parameters), (node.name, stubbed, actual)
        if isinstance(node, ast.ClassDef):
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            stubbed = [a.arg for a in init.args.kwonlyargs]
            actual = inspect.signature(getattr(_native, node.name))
            assert stubbed == list(actual.parameters), (node.name, stubbed, actual)


def test_the_package_is_typed_and_built_for_the_stable_abi() -> None:
    root = Path(harvest.__file__).parent
    assert (root / "py.typed").is_file()
    assert Path(_native.__file__).name.endswith(".abi3.so"), _native.__file__
