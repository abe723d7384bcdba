"""The compiled modules match the package: version, reported build, stub names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import recfast
from recfast import _C

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert _C.__version__ == recfast.__version__ == version


def test_build_info_reports_the_build() -> None:
    info = recfast.build_info()
    assert info["version"] == recfast.__version__
    assert isinstance(info["openmp"], bool)
    assert info["openmp_max_threads"] >= 1
    assert info["cuda"] == (recfast._backend._C_cuda is not None)
    if info["cuda"]:
        assert 80 in info["cuda_architectures"] and 90 in info["cuda_architectures"]
    assert isinstance(recfast.cuda_available(), bool)


def test_stub_names_match_module() -> None:
    """_C.pyi documents exactly what _C exports."""
    tree = ast.parse((ROOT / "recfast" / "_C.pyi").read_text())
    stub = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stub |= {t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target] if isinstance(t, ast.Name)}
    stub = {n for n in stub if not n.startswith("__")}
    exported = {n for n in dir(_C) if not n.startswith("__")}
    assert stub == exported


def test_extension_does_not_link_libtorch() -> None:
    path = Path(_C.__file__)
    data = path.read_bytes()
    assert b"libtorch" not in data and b"libc10" not in data


def test_cuda_module_loads_without_gpu() -> None:
    """_C_cuda, where built, imports and reports zero devices rather than failing without a GPU."""
    mod = recfast._backend._C_cuda
    if mod is None:
        pytest.skip("built without CUDA")
    assert mod.__version__ == recfast.__version__
    assert mod.device_count() >= 0


def test_sanitizer_build_is_the_one_under_test() -> None:
    """tools/sanitize_tests.sh sets RECFAST_EXPECT_SANITIZE: make sure the ASan module was imported."""
    import os

    if os.environ.get("RECFAST_EXPECT_SANITIZE") != "1":
        pytest.skip("not a sanitizer run")
    assert recfast.build_info()["sanitize"] is True
