"""The short soak of `make test`: 8 clients (4 socket, 4 HTTP) x 5 jobs with seeded cancels
and disconnects against one real `sdhost serve` (tests/soak/soak.py; `make soak` runs 8 x 50)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from soak import RSS_GROWTH_LIMIT_MB, default_sdhost, soak  # noqa: E402


def test_short_soak_loses_nothing_and_leaks_nothing() -> None:
    sdhost = default_sdhost()
    if not sdhost.exists():
        pytest.fail(f"{sdhost} is missing: build with `cargo build --release` (make test does)")
    report = soak(clients=8, jobs=5, seed=2, sdhost=sdhost, max_rss_growth_mb=RSS_GROWTH_LIMIT_MB)
    print("\n".join(report.lines()))
    assert not report.failures, "\n".join(report.lines())
    # Every client ran: the seeded plan has finished jobs of both kinds and stops of each kind.
    assert report.counts.get("socket jobs done", 0) > 0 and report.counts.get("http jobs done", 0) > 0
    stops = ("socket cancels honoured", "http interrupts honoured", "socket disconnects honoured",
             "http requests dropped mid-job")
    assert all(report.counts.get(what, 0) > 0 for what in stops), report.counts
