"""How ``make test`` shares its slowest session fixtures between pytest-xdist's processes (tests/conftest.py):
the files of one fixture form one group, every other file is its own."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, SHARED_SESSION_FIXTURES, worker_group


def test_the_files_of_one_shared_fixture_are_one_group_and_every_other_file_its_own() -> None:
    assert worker_group("tests/integration/test_demo.py") == worker_group(
        "tests/integration/test_demo_browser.py"
    )
    assert worker_group("tests/integration/test_zones.py") == worker_group(
        "tests/integration/test_zone_editor_browser.py"
    )
    assert worker_group("tests/reliability/test_bad_input.py") == worker_group(
        "tests/reliability/test_security.py"
    )
    assert len({worker_group(f) for files in SHARED_SESSION_FIXTURES.values() for f in files}) == len(
        SHARED_SESSION_FIXTURES
    )
    # A prefix is a folder, not the start of a name; other files group alone.
    assert worker_group("tests/integration/test_demo_world.py") == "tests/integration/test_demo_world.py"
    assert worker_group("tests/unit/test_zones.py") == "tests/unit/test_zones.py"
    # A test's id groups as its file does.
    demo_test = "tests/integration/test_demo.py::test_demo_detects_injected_anomalies"
    assert worker_group(demo_test) == worker_group("tests/integration/test_demo.py")
    assert worker_group("tests/unit/test_zones.py::test_peak_box_and_zone") == "tests/unit/test_zones.py"


@pytest.mark.parametrize("files", list(SHARED_SESSION_FIXTURES.values()))
def test_every_listed_file_exists(files: tuple[str, ...]) -> None:
    for f in files:
        assert (REPO / f).exists(), f
