"""The mutation-testing driver (`benchmarks/mutation.py`) itself, on a tiny module, so that it cannot rot.

The driver is not part of the test run (it runs the suite once per mutant); this checks the parts
it is built from: it finds a known mutant, a test that checks the boundary kills it, a weaker test
lets it survive, and the equivalent-mutant list is read and applied."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("fleetform_mutation", REPO / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _tiny_repo(tmp_path, test_body: str):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "__init__.py").write_text("")
    (tmp_path / "tiny" / "limits.py").write_text("def fits(n):\n    return n < 3\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_limits.py").write_text(
        f"from tiny.limits import fits\n\n\ndef test_fits():\n{test_body}"
    )
    return tmp_path


def test_finds_the_boundary_mutant_and_a_boundary_test_kills_it(driver, tmp_path):
    root = _tiny_repo(tmp_path, "    assert fits(2)\n    assert not fits(3)\n")
    found = driver.mutants("tiny/limits.py", root)
    assert {(m.line, m.what) for m in found} == {(2, "Lt -> LtE"), (2, "3 -> 4"), (2, "return None")}
    [boundary] = [m for m in found if m.what == "Lt -> LtE"]
    assert "n <= 3" in boundary.source
    assert driver.run_module(root, "tiny/limits.py", ("tests/test_limits.py",), found, 60) == []
    assert (root / "tiny" / "limits.py").read_text() == "def fits(n):\n    return n < 3\n"  # restored


def test_a_test_that_misses_the_boundary_lets_it_survive(driver, tmp_path):
    root = _tiny_repo(tmp_path, "    assert fits(2)\n    assert not fits(9)\n")
    found = [m for m in driver.mutants("tiny/limits.py", root) if m.what != "return None"]
    survivors = driver.run_module(root, "tiny/limits.py", ("tests/test_limits.py",), found, 60)
    assert sorted(m.what for m in survivors) == ["3 -> 4", "Lt -> LtE"]


def test_equivalent_list_is_read_and_excludes_its_mutants(driver, tmp_path):
    listing = tmp_path / "equivalent.txt"
    listing.write_text(
        "# comment\n\ntiny/limits.py:2: Lt -> LtE  # n is never 3 (it cannot be: made up for this test)\n"
    )
    equivalent = driver.read_equivalent(listing)
    assert equivalent == {("tiny/limits.py", 2, "Lt -> LtE"): "n is never 3 (it cannot be: made up for this test)"}
    found = driver.mutants("tiny/limits.py", _tiny_repo(tmp_path, "    pass\n"))
    run, skipped = driver.split_equivalent(found, equivalent)
    assert [m.what for m in skipped] == ["Lt -> LtE"] and len(run) == len(found) - 1
    assert driver.read_equivalent(tmp_path / "absent.txt") == {}
    listing.write_text("tiny/limits.py:2: Lt -> LtE\n")  # no reason given
    with pytest.raises(SystemExit, match="expected `path:line: change  # why`"):
        driver.read_equivalent(listing)


def test_every_target_and_its_tests_exist(driver):
    for module, tests in driver.TARGETS.items():
        assert (REPO / module).is_file(), module
        for test in tests:
            assert (REPO / test).is_file(), (module, test)
