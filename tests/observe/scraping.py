"""Scraping a server's /metrics the way Prometheus does, and reading values out of it."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels (the parser checks the format)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a test's own server
            assert response.status == 200
            body: bytes = response.read()
            return body.decode()

    return parse(await asyncio.to_thread(get))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample's value; None when the page has no such series."""
    return samples.get((name, frozenset(labels.items())))


async def scrape_until(url: str, ready: Callable[[Samples], bool], seconds: float = 30) -> Samples:
    """Scrape until `ready` holds (work done by background loops lands a little later)."""
    deadline = time.monotonic() + seconds
    while True:
        samples = await scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)
