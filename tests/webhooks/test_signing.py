"""Standard Webhooks signing: the spec's test vector, rotation, and an independent verifier."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from agenttasks.webhooks import signing
from agenttasks.webhooks.signing import SignatureError

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"type":"task.completed","data":{"task_id":"t1"}}'
MSG_ID = "0190f5b2-7c1e-7abc-8def-0123456789ab"


def test_spec_test_vector() -> None:
    assert signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_spec_test_vector_verifies() -> None:
    sent = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE}
    signing.verify(SPEC_SECRET, sent, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_independent_verifier_accepts_our_headers() -> None:
    secret = signing.new_secret()
    sent = signing.headers(MSG_ID, int(time.time()), BODY, [secret])
    assert Webhook(secret).verify(BODY, sent) == {"type": "task.completed", "data": {"task_id": "t1"}}


def test_independent_signer_agrees_on_the_spec_vector() -> None:
    theirs = Webhook(SPEC_SECRET).sign(SPEC_ID, datetime.fromtimestamp(SPEC_TIMESTAMP, UTC), SPEC_BODY.decode())
    assert theirs == SPEC_SIGNATURE == signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)


def test_headers_carry_everything_a_receiver_needs() -> None:
    secret = signing.new_secret()
    sent = signing.headers(MSG_ID, 1700000000, BODY, [secret])
    assert sent == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1700000000",
        "webhook-signature": signing.sign(secret, MSG_ID, 1700000000, BODY),
        "content-type": "application/json",
        "user-agent": signing.USER_AGENT,
    }
    assert signing.USER_AGENT.startswith("agenttasks-webhooks/")


def test_rotation_sends_both_signatures_current_first() -> None:
    current, previous = signing.new_secret(), signing.new_secret()
    now = int(time.time())
    sent = signing.headers(MSG_ID, now, BODY, [current, previous])
    first, second = sent["webhook-signature"].split(" ")
    assert first == signing.sign(current, MSG_ID, now, BODY)
    assert second == signing.sign(previous, MSG_ID, now, BODY)
    for secret in (current, previous):
        signing.verify(secret, sent, BODY)
        Webhook(secret).verify(BODY, sent)
    with pytest.raises(SignatureError):
        signing.verify(signing.new_secret(), sent, BODY)


@pytest.mark.parametrize("tampered", ["body", "timestamp", "id"])
def test_tampering_fails_both_verifiers(tampered: str) -> None:
    secret = signing.new_secret()
    now = int(time.time())
    sent = signing.headers(MSG_ID, now, BODY, [secret])
    body = BODY
    if tampered == "body":
        body = BODY.replace(b"t1", b"t2")
    elif tampered == "timestamp":
        sent["webhook-timestamp"] = str(now - 1)  # inside the tolerance window: only the HMAC can catch it
    else:
        sent["webhook-id"] = MSG_ID[:-1] + "c"
    with pytest.raises(SignatureError, match="no matching signature"):
        signing.verify(secret, sent, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, sent)


def test_verify_checks_the_timestamp_window() -> None:
    secret = signing.new_secret()
    sent = signing.headers(MSG_ID, 1_000_000, BODY, [secret])
    signing.verify(secret, sent, BODY, now=1_000_000 + 299)
    for now in (1_000_000 + 301, 1_000_000 - 301):
        with pytest.raises(SignatureError, match="tolerance"):
            signing.verify(secret, sent, BODY, now=now)
    signing.verify(secret, sent, BODY, now=1_000_000 + 3000, tolerance=3600)


def test_verify_is_case_insensitive_and_skips_unknown_versions() -> None:
    secret = signing.new_secret()
    sent = signing.headers(MSG_ID, 1_000_000, BODY, [secret])
    shouted = {name.upper(): value for name, value in sent.items()}
    shouted["WEBHOOK-SIGNATURE"] = "v2,abc v1,not-base64! " + sent["webhook-signature"]
    signing.verify(secret, shouted, BODY, now=1_000_000)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": MSG_ID, "webhook-timestamp": "1000000"},
        {"webhook-id": MSG_ID, "webhook-timestamp": "1e6", "webhook-signature": "v1,AAAA"},
    ],
)
def test_verify_refuses_missing_or_malformed_headers(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        signing.verify(SPEC_SECRET, headers, BODY, now=1_000_000)


def test_new_secret_round_trips() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(signing.parse_secret(secret)) == 32
    assert signing.new_secret() != secret
    assert signing.parse_secret(SPEC_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


@pytest.mark.parametrize(
    "bad",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
def test_parse_secret_refuses_bad_secrets(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        signing.parse_secret(bad)


def test_parse_secret_tolerates_missing_padding() -> None:
    key = bytes(range(25))  # 25 bytes: base64 with padding
    encoded = base64.b64encode(key).decode()
    assert encoded.endswith("=")
    assert signing.parse_secret("whsec_" + encoded.rstrip("=")) == key


@pytest.mark.parametrize("msg_id", ["", "a.b", "has space", "new\nline", "ünï"])
def test_sign_refuses_ids_that_would_be_ambiguous_or_unsendable(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        signing.sign(SPEC_SECRET, msg_id, SPEC_TIMESTAMP, SPEC_BODY)


def test_signature_header_needs_a_secret_list() -> None:
    with pytest.raises(ValueError, match="at least one"):
        signing.signature_header([], MSG_ID, 1, BODY)
    with pytest.raises(TypeError):
        signing.signature_header(SPEC_SECRET, MSG_ID, 1, BODY)
