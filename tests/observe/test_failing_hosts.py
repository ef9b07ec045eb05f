"""The failing-endpoint series names hosts only, and a bounded number of them."""

from __future__ import annotations

from agenttasks.observe.metric_families import OTHER, failing_hosts


def test_hosts_keep_no_path_query_or_user_info_and_the_rest_goes_under_other() -> None:
    urls = [
        ("https://user:s3cret@a.example/hook?token=t", 5),
        ("https://a.example/other", 2),
        ("https://b.example:8443/x", 4),
        ("http://c.example/", 1),
        ("http://[::1]:9/y", 1),
    ]
    assert failing_hosts(urls, 2) == {"a.example": 7, "b.example:8443": 4, OTHER: 2}
    assert failing_hosts(urls, 10) == {"a.example": 7, "b.example:8443": 4, "c.example": 1, "[::1]:9": 1}
    assert failing_hosts([], 10) == {}
