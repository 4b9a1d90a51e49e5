"""Marks every test in this folder ``reliability`` so the suite can be selected or skipped with ``-m``."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A session-wide hook: it sees every collected item, so only ours are marked.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.reliability)
