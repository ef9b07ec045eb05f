"""The field rules and the server's checks side by side: every bound the table states is the one
the checks enforce, and every value the table's patterns allow is accepted.

docs/openapi.json is rendered from the same table (tests/docs/test_openapi.py holds the document
to it), so together these keep the published constraints and the enforced ones one and the same.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenttasks.core import field_rules, validation
from agenttasks.core.errors import InvalidArgument, Why
from agenttasks.core.field_rules import ANY_AGENT, Rule
from agenttasks.core.ids import check_id
from agenttasks.core.validation import Limits
from agenttasks.settings import Settings
from agenttasks.webhooks.ssrf import check_url_literal

LIMITS = Limits()
RULES = LIMITS.rules()


def submit(**fields: Any) -> validation.SubmitSpec:
    given_fields: dict[str, Any] = {
        "message": "m",
        "priority": None,
        "timeout_override": None,
        "metadata": None,
        "callback_mode": "",
        "webhook_url": "",
        "request_id": "",
    }
    return validation.validate_submit(**(given_fields | fields), limits=LIMITS)


def agent(creating: bool = True, **fields: Any) -> None:
    given_fields: dict[str, Any] = {
        "name": "a",
        "description": None,
        "default_timeout_seconds": None,
        "max_attempts": None,
        "input_timeout_seconds": None,
        "metadata": None,
    }
    validation.validate_agent_fields(**(given_fields | fields), limits=LIMITS, creating=creating)


WEBHOOK_URL = "https://example.com/hook"


def webhook(url: str) -> None:
    """Submit's checks, and the literal-address check TaskCore adds (webhooks/ssrf.py)."""
    submit(callback_mode="webhook", webhook_url=url)
    if (why := check_url_literal(url)) is not None:
        raise InvalidArgument.field("webhook_url", why)


CHECKS = {
    "priority": lambda value: submit(priority=value),
    "timeout_override": lambda value: submit(timeout_override=value),
    "default_timeout_seconds": lambda value: agent(default_timeout_seconds=value),
    "max_attempts": lambda value: agent(max_attempts=value),
    "input_timeout_seconds": lambda value: agent(input_timeout_seconds=value),
    "message": lambda value: submit(message=value),
    "request_id": lambda value: submit(request_id=value),
    "webhook_url": lambda value: webhook(value),
    "callback_mode": lambda value: submit(callback_mode=value, webhook_url=WEBHOOK_URL if value == "webhook" else ""),
    "name": lambda value: agent(name=value),
    "description": lambda value: agent(description=value),
    "status_message": lambda value: validation.validate_agent_status("active", value),
    "agent_status": lambda value: validation.validate_agent_status(value, ""),
    "task_status": validation.validate_status_filter,
    "page_size": validation.validate_page_size,
    "agent_id": lambda value: check_id(value, "agent_id"),
    "task_id": lambda value: check_id(value, "task_id"),
    "task_agent_id": lambda value: value == ANY_AGENT or check_id(value, "agent_id"),
}


def refused(field: str, value: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        CHECKS[field](value)
    return raised.value


def test_the_settings_defaults_are_the_limits_the_document_is_made_for() -> None:
    """gen_openapi renders the rules of Settings' defaults; the checks' own defaults agree."""
    defaults = Settings.model_fields
    assert defaults["max_message_bytes"].default == LIMITS.max_message_bytes
    assert defaults["max_timeout_seconds"].default == LIMITS.max_timeout_seconds


RANGES = [name for name, rule in RULES.items() if rule.minimum is not None and name in CHECKS]


@pytest.mark.parametrize("name", RANGES)
def test_every_range_is_enforced_exactly(name: str) -> None:
    rule = RULES[name]
    assert rule.minimum is not None and rule.maximum is not None
    CHECKS[name](rule.minimum)
    CHECKS[name](rule.maximum)
    if name == "page_size":  # more than the most a page holds is clamped, not refused
        assert validation.validate_page_size(rule.maximum) == field_rules.MAX_PAGE_SIZE
    else:
        assert refused(name, rule.maximum + 1).violations[0].reason is Why.OUT_OF_RANGE
    assert refused(name, rule.minimum - 1).violations[0].reason is Why.OUT_OF_RANGE


IDS = ("agent_id", "task_id", "task_agent_id")
LENGTHS = [name for name, rule in RULES.items() if rule.max_length is not None and name in CHECKS and name not in IDS]


@pytest.mark.parametrize("name", LENGTHS)
def test_every_length_is_a_bound_the_checks_keep(name: str) -> None:
    """A value of the longest length the document allows is accepted; where the limit is in
    characters, one more is refused; where it is in bytes, one byte more is."""
    rule = RULES[name]
    assert rule.max_length is not None
    longest = "a" * rule.max_length
    if name == "webhook_url":
        longest = "https://a" + "/" * (rule.max_length - len("https://a"))
    CHECKS[name](longest)
    CHECKS[name]("\U0001f600" * rule.max_length if rule.max_bytes else longest)  # 4 bytes each
    too_long = "a" * (rule.max_bytes + 1) if rule.max_bytes else longest + "a"
    assert refused(name, too_long).violations[0].reason in (Why.TOO_LONG, Why.BAD_FORMAT)


ENUMS = [name for name, rule in RULES.items() if rule.enum]


@pytest.mark.parametrize("name", ENUMS)
def test_every_enum_value_is_accepted_and_no_other(name: str) -> None:
    for value in RULES[name].enum:
        CHECKS[name](value)
    assert refused(name, "nope").violations[0].reason is Why.NOT_ALLOWED_VALUE


def matching(rule: Rule) -> st.SearchStrategy[str]:
    assert rule.pattern is not None
    strings = st.from_regex(rule.pattern, fullmatch=True)
    return strings.filter(lambda s: (rule.min_length or 0) <= len(s) <= (rule.max_length or 400))


PATTERNS = [name for name, rule in RULES.items() if rule.pattern is not None and name in CHECKS]


@pytest.mark.parametrize("name", PATTERNS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_every_value_the_pattern_allows_is_accepted(name: str, data: st.DataObject) -> None:
    """What schemathesis checks over HTTP, here over the checks themselves, for many more values."""
    rule = RULES[name]
    value = data.draw(matching(rule))
    CHECKS[name](value)


@pytest.mark.parametrize(
    ("name", "bad", "why"),
    [
        ("message", "   ", Why.REQUIRED),
        ("message", "a\x00b", Why.NUL_CHARACTER),
        ("name", "\x1c\x85", Why.REQUIRED),  # blank to Python's strip(): the pattern refuses it too
        ("description", "\x00", Why.NUL_CHARACTER),
        ("status_message", "\x00", Why.NUL_CHARACTER),
        ("request_id", "a b", Why.BAD_FORMAT),
        ("agent_id", "42", Why.NOT_A_UUID),
    ],
)
def test_values_outside_the_patterns_are_refused_with_a_stable_reason(name: str, bad: str, why: Why) -> None:
    pattern = RULES[name].pattern
    assert pattern is not None and re.fullmatch(pattern, bad) is None
    assert refused(name, bad).violations[0].reason is why
