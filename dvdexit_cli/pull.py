"""Moved to ``dvdexit_cli.receive.pull`` (issue 12); this path stays for one release."""

from dvdexit_cli.receive.pull import (
    PULL_OUTCOMES,
    PulledInstance,
    PullResult,
    PullSettings,
    StudyQuery,
    list_studies,
    pull,
)

__all__ = [
    "PULL_OUTCOMES",
    "PullResult",
    "PullSettings",
    "PulledInstance",
    "StudyQuery",
    "list_studies",
    "pull",
]
