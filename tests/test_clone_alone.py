"""A clone with no ../shared beside it passes (issue 31): every test that reads the shared test faces gets their
folder from conftest's faces_data fixture, which skips with one line where they are missing (and fails under
MAGICID_REQUIRE_DATA=1, as .ci/run sets), instead of building the path itself and failing with a traceback."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def paths_to_shared(source: str) -> list[int]:
    """Line numbers of the string literal "shared" used as a path part (Path(...) / "shared", "../shared/...")."""
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # docstrings: words, not paths
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            text = node.value
            if text == "shared" or text.startswith(("../shared", "shared/")) or "/shared/data" in text:
                lines.append(node.lineno)
    return lines


def test_no_test_builds_a_path_to_the_shared_faces_but_the_fixture():
    others = [path for path in sorted(TESTS.glob("*.py")) if path.name not in ("conftest.py", Path(__file__).name)]
    found = {path.name: lines for path in others if (lines := paths_to_shared(path.read_text()))}
    assert not found, f"use the faces_data fixture (tests/conftest.py) instead of a path to ../shared: {found}"


def test_the_finder_sees_the_ways_a_path_to_shared_is_written():
    assert paths_to_shared('FACES = ROOT.parent / "shared" / "data" / "faces"') == [1]
    assert paths_to_shared('x = Path("../shared/data/faces")') == [1]
    assert paths_to_shared('"""Photos: ../shared/data/faces (see its README)."""') == []  # a docstring says where
    assert paths_to_shared('x = "the shared cache"') == []
