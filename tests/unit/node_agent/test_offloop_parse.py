"""Where the agent parses a scrape: small bodies in a thread, large ones in a worker process."""

from __future__ import annotations

import os
import threading

import pytest

from triserve.node_agent.promtext import ScrapeError
from triserve.node_agent.scraping import OffLoopParser
from triserve.node_agent.serving import parse_serving_scrape


def where(text: str) -> tuple[int, int, int]:
    """(process id, thread id, length): where this call ran."""
    return os.getpid(), threading.get_ident(), len(text)


def die(text: str) -> None:
    """A parse whose worker is killed mid-way (as the kernel's OOM killer would)."""
    os._exit(9)


async def test_a_large_body_is_parsed_in_another_process_and_a_small_one_in_a_thread() -> None:
    parser = OffLoopParser(process_above=1000)
    try:
        small = await parser.parse(10, where, "x" * 10)
        large = await parser.parse(5000, where, "x" * 5000)
        again = await parser.parse(5000, where, "y" * 5000)
    finally:
        parser.close()
    assert small[0] == os.getpid() and small[1] != threading.get_ident()
    assert large[0] != os.getpid() and large[2] == 5000
    assert again[0] == large[0]  # one long-lived worker, not a process per body


async def test_the_real_parsers_results_and_errors_cross_the_process_boundary() -> None:
    body = 'vllm:num_requests_running{model_name="m"} 3\n' + "# padding\n" * 200
    parser = OffLoopParser(process_above=100)
    try:
        scrape = await parser.parse(len(body), parse_serving_scrape, body, 12.5)
        with pytest.raises(ScrapeError, match="serving metrics"):
            await parser.parse(5000, parse_serving_scrape, "other_metric 1\n" * 300, 1.0)
    finally:
        parser.close()
    assert scrape.total.running == 3 and scrape.total.timestamp_s == 12.5


async def test_a_worker_that_dies_fails_one_parse_and_is_replaced() -> None:
    parser = OffLoopParser(process_above=0)
    try:
        with pytest.raises(ScrapeError, match="parse worker died"):
            await parser.parse(10, die, "x")
        after = await parser.parse(10, where, "x")
    finally:
        parser.close()
    assert after[0] != os.getpid()
