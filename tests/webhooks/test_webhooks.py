"""Webhooks as a receiver sees them (SPEC section 11), through `latchkey serve` on the embedded
backend: every delivery verified with the Standard Webhooks reference library."""

import json
import threading

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conftest import Org, poll

API_KEY = "sk_live_webhook_suite_never_in_a_body"


def check_delivery(request, org, hook, secret, connection_id):
    """A delivery as Standard Webhooks and SPEC 11 have it: verified (signature, and a timestamp
    within the library's 5 minutes), a `msg_` id, the `{type, timestamp, data}` body of the
    event, and no secret."""
    assert request.error is None, f"standardwebhooks refused it: {request.error}"
    assert request.id.startswith("msg_"), request.headers
    assert abs(request.timestamp - request.at) < 60, "webhook-timestamp is this attempt's"
    assert request.headers["content-type"].startswith("application/json")
    body = request.verified
    assert set(body) == {"type", "timestamp", "data"}, body
    assert body["type"] == "Connection Created"
    data = body["data"]
    assert (data["org"], data["connection_id"]) == (org.id, connection_id), data
    assert data["event_id"], data
    for secret_value in (API_KEY, secret, org.server.secret, org.token):
        assert secret_value not in request.body, "a secret in a delivery body"


def one_id_per_event(requests):
    """The same event never arrives under two ids (nor two events under one)."""
    ids = {}
    for r in requests:
        event = json.loads(r.body)["data"]["event_id"]
        ids.setdefault(event, set()).add(r.id)
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({i for v in ids.values() for i in v}) == len(ids), ids
    return ids


def test_every_delivery_is_signed_timestamped_and_identified(latchkey, receiver):
    org = Org(latchkey)
    hook, secret = org.webhook(receiver.url)
    receiver.secret = secret
    created = org.api_key_connection(API_KEY)

    got = poll(lambda: receiver.requests(), "a delivery")
    assert len(got) == 1, [r.status for r in got]
    check_delivery(got[0], org, hook, secret, created["id"])
    # The record of it: the same id, delivered at the first attempt, no secret.
    deliveries = poll(lambda: [d for d in org.deliveries(hook) if d["status"] == "delivered"], "delivered")
    assert [d["id"] for d in deliveries] == [got[0].id]
    assert [a.get("status_code") for a in deliveries[0]["attempts"]] == [200]
    listed = json.dumps(org.api("GET", f"/v1/webhooks/{hook}"))
    assert secret not in listed and API_KEY not in json.dumps(deliveries)
    # A signature by another secret does not verify: the receiver does check.
    other = "whsec_" + "A" * 43
    try:
        Webhook(other).verify(got[0].body, got[0].headers)
        raise AssertionError("verified with the wrong secret")
    except WebhookVerificationError:
        pass


def test_429_then_500_then_200_delivers_on_the_third_attempt(latchkey, receiver):
    org = Org(latchkey)
    hook, secret = org.webhook(receiver.url)
    receiver.secret = secret
    receiver.script = [429, 500]
    created = org.api_key_connection(API_KEY)

    got = poll(lambda: (r := receiver.requests()) and len(r) >= 3 and r, "three attempts")
    assert [r.status for r in got] == [429, 500, 200]
    for r in got:
        check_delivery(r, org, hook, secret, created["id"])
    one_id_per_event(got)
    # Each attempt is signed at its own time, after the schedule's wait (1 s; Retry-After: 1).
    assert got[0].timestamp <= got[1].timestamp <= got[2].timestamp
    assert got[1].at - got[0].at >= 0.9 and got[2].at - got[1].at >= 0.9, [r.at for r in got]
    delivered = poll(lambda: [d for d in org.deliveries(hook) if d["status"] == "delivered"], "delivered")
    assert [a.get("status_code") for a in delivered[0]["attempts"]] == [429, 500, 200]
    assert delivered[0]["id"] == got[0].id
    assert len(receiver.requests()) == 3, "nothing after the 200"


def test_a_receiver_down_across_a_restart_still_gets_the_event(latchkey, receiver):
    org = Org(latchkey)
    hook, secret = org.webhook(receiver.url)
    receiver.secret = secret
    # The first attempt reaches the receiver and is held there: latchkey serve is killed while
    # the delivery is in flight.
    receiver.hold = threading.Event()
    created = org.api_key_connection(API_KEY)
    poll(lambda: receiver.requests(), "the first attempt in flight")
    latchkey.kill()
    # The receiver goes down while latchkey is stopped, and latchkey comes back before it.
    held, receiver.hold = receiver.hold, None
    held.set()
    receiver.down()
    latchkey.start()
    assert org.call("GET", "/healthz").status_code == 200

    # The delivery claimed by the killed process comes due again (its 60 s lease lapses) and is
    # attempted while the receiver is still down: the attempt is recorded with the connection
    # error, the delivery stays pending.
    def refused():
        deliveries = org.deliveries(hook)
        attempts = [a for d in deliveries for a in d["attempts"]]
        failed = [a for a in attempts if a.get("error") and a.get("status_code") is None]
        return failed and deliveries[0]["status"] == "pending" and deliveries
    refused_at = poll(refused, "an attempt refused by the receiver that is down", timeout=120, interval=0.02)
    assert len(receiver.requests()) == 1, "nothing reached the receiver while it was down"
    # latchkey serve restarts (before the next attempt, due 1 s later), and the receiver comes up.
    latchkey.kill()
    receiver.up()
    latchkey.start()

    # The pending delivery is retried under the same id: the receiver gets the event.
    got = poll(lambda: [r for r in receiver.requests() if r.status == 200], "the event after the restart",
               timeout=120)
    every = receiver.requests()
    for r in every:
        check_delivery(r, org, hook, secret, created["id"])
    one_id_per_event(every)
    assert len(got) == 1
    delivered = poll(lambda: [d for d in org.deliveries(hook) if d["status"] == "delivered"], "delivered")
    assert [d["id"] for d in delivered] == [got[0].id] == [refused_at[0]["id"]]
    statuses = [a.get("status_code") for a in delivered[0]["attempts"]]
    assert statuses[0] is None and statuses[-1] == 200, delivered[0]["attempts"]


def test_two_events_two_ids_and_each_event_one(latchkey, receiver):
    org = Org(latchkey)
    hook, secret = org.webhook(receiver.url, events=("Connection Created", "Connection Disconnected"))
    receiver.secret = secret
    created = org.api_key_connection(API_KEY)
    org.api("POST", f"/v1/connections/{created['id']}/disconnect")

    got = poll(lambda: (r := receiver.requests()) and len(r) >= 2 and r, "two deliveries")
    assert sorted(json.loads(r.body)["type"] for r in got) == ["Connection Created", "Connection Disconnected"]
    ids = one_id_per_event(got)
    assert len(ids) == 2
    for r in got:
        assert r.error is None, r.error
        assert API_KEY not in r.body and secret not in r.body


def test_a_url_at_a_private_address_is_refused(latchkey):
    org = Org(latchkey)
    for url in ("http://10.0.0.7/hook", "https://192.168.1.20/hook", "https://169.254.169.254/latest"):
        r = org.call("PUT", "/v1/webhooks/wh-private", {"url": url, "events": ["Connection Created"], "enabled": True})
        assert r.status_code == 422, f"{url}: {r.status_code} {r.text}"
        assert any(e.get("field") == "url" for e in r.json().get("errors", [])), r.text
