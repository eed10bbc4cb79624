"""Final C-GET / C-MOVE statuses: category, meaning, and the sub-operation counts kept."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dvdexit_cli.transport.dimse_query import (
    Suboperations,
    retrieve_status_category,
    retrieve_status_text,
)


@pytest.mark.parametrize(
    ("code", "category", "words"),
    [
        (0x0000, "success", "complete"),
        (0xB000, "warning", "failures or warnings"),
        (0xFE00, "cancel", "cancel"),
        (0xA701, "failure", "number of matches"),
        (0xA702, "failure", "sub-operations"),
        (0xA7FF, "failure", "out of resources"),
        (0xA801, "failure", "destination unknown"),
        (0xA900, "failure", "does not match"),
        (0xA9AB, "failure", "does not match"),
        (0xAA00, "failure", "frames"),
        (0xC000, "failure", "unable to process"),
        (0xCFFF, "failure", "unable to process"),
        (0x0122, "failure", "SOP class not supported"),
        (0x1234, "failure", "unknown"),
    ],
)
def test_every_final_status_has_a_category_and_a_meaning(
    code: int, category: str, words: str
) -> None:
    assert retrieve_status_category(code) == category
    assert words in retrieve_status_text(code)


def _response(status: int, **counts: int) -> Dataset:
    ds = Dataset()
    ds.Status = status
    for name, value in counts.items():
        setattr(ds, f"NumberOf{name}Suboperations", value)
    return ds


def test_counts_come_from_pending_answers_and_the_final_answer_wins() -> None:
    ended = Suboperations()
    ended.update(_response(0xFF00, Completed=1, Failed=0, Warning=0), 0xFF00)
    assert ended.status is None and ended.completed == 1 and not ended.failure
    ended.update(_response(0xA702, Completed=2, Failed=3, Warning=0), 0xA702)

    assert (ended.status, ended.completed, ended.failed, ended.warning) == (0xA702, 2, 3, 0)
    assert ended.failure and ended.sent_something
    text = ended.describe("C-MOVE")
    assert "status A702" in text and "2 completed, 3 failed, 0 warning" in text
    assert ended.to_json() == {
        "status": "A702",
        "category": "failure",
        "meaning": retrieve_status_text(0xA702),
        "completed": 2,
        "failed": 3,
        "warning": 0,
    }


def test_a_failure_without_counts_sent_nothing_as_far_as_the_peer_says() -> None:
    ended = Suboperations()
    ended.update(_response(0xC000), 0xC000)

    assert ended.failure and not ended.sent_something
    assert ended.completed is None and ended.to_json()["completed"] is None
    assert ended.describe("C-GET").endswith("(unable to process)")


def test_a_warning_is_not_a_failure_and_a_cut_short_retrieval_has_no_status() -> None:
    warned = Suboperations()
    warned.update(_response(0xB000, Completed=4, Failed=1, Warning=0), 0xB000)
    assert not warned.failure and warned.failed == 1

    cut = Suboperations(completed=2)
    assert cut.to_json()["status"] is None and "cut short" in cut.describe("C-GET")
