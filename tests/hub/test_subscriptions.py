"""NGSI-LD subscriptions: the API, matching, and delivery to real endpoints."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_commune
from live_server import serve_process
from webhook import Webhook

from communs.hub.notify import Leadership, Notifier

STREETLIGHT = "urn:ngsi-ld:Streetlight:"
POINT = [0.69, 47.39]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def notifier(settings, db) -> Iterator[Notifier]:
    """The notifier of ``communs serve``, running in its own event loop and thread."""
    service = Notifier(settings.with_overrides(job_backoff_seconds=0.05), db)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(service.run(),), daemon=True)
    thread.start()
    yield service
    loop.call_soon_threadsafe(service.stop)
    thread.join(timeout=15)
    loop.close()


def subscription(endpoint: str, **members) -> dict:
    body = {
        "id": f"urn:ngsi-ld:Subscription:{uuid.uuid4().hex[:8]}",
        "type": "Subscription",
        "entities": [{"type": "Streetlight"}],
        "notification": {"endpoint": {"uri": endpoint}},
    }
    body.update(members)
    return body


def streetlight(number: int, power: str = "on", level: float = 50.0) -> dict:
    return {
        "id": f"{STREETLIGHT}{number}",
        "type": "Streetlight",
        "powerState": {"type": "Property", "value": power},
        "dimmingLevel": {"type": "Property", "value": level},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [0.69, 47.39]},
        },
    }


def subscribe(hub, body: dict) -> str:
    response = hub.request("POST", "/subscriptions", body)
    assert response.status_code == 201, response.text
    return body["id"]


def read(hub, path: str, **kwargs):
    """Subscriptions are read with the tenant's key (they hold endpoints and headers)."""
    return hub.get(path, headers={"Authorization": f"Bearer {hub.key}"}, **kwargs)


def wait_for_figures(hub, subscription_id: str, ready, timeout: float = 5.0) -> dict:
    """The subscription's notification figures, once ``ready`` (they are written about
    once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        status = read(hub, f"/subscriptions/{subscription_id}").json()["notification"]
        if ready(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def patch(hub, number: int, **attributes) -> None:
    body = {name: {"type": "Property", "value": value} for name, value in attributes.items()}
    response = hub.request("PATCH", f"/entities/{STREETLIGHT}{number}/attrs", body)
    assert response.status_code == 204, response.text


# ---------------------------------------------------------------- the API


def test_subscription_crud_and_status(hub):
    body = subscription(
        "http://127.0.0.1:9/notify",
        watchedAttributes=["powerState"],
        q="dimmingLevel>10",
        subscriptionName="lampadaires",
    )
    response = hub.request("POST", "/subscriptions", body)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/ngsi-ld/v1/subscriptions/{body['id']}"

    found = read(hub, f"/subscriptions/{body['id']}").json()
    assert found["id"] == body["id"]
    assert found["status"] == "active" and found["isActive"] is True
    assert found["watchedAttributes"] == ["powerState"] and found["q"] == "dimmingLevel>10"
    assert found["notification"]["timesSent"] == 0

    listed = read(hub, "/subscriptions", params={"count": "true"})
    assert [s["id"] for s in listed.json()] == [body["id"]]
    assert listed.headers["NGSILD-Results-Count"] == "1"

    response = hub.request("PATCH", f"/subscriptions/{body['id']}", {"isActive": False, "q": None})
    assert response.status_code == 204
    found = read(hub, f"/subscriptions/{body['id']}").json()
    assert found["status"] == "paused" and "q" not in found

    assert hub.request("DELETE", f"/subscriptions/{body['id']}").status_code == 204
    missing = read(hub, f"/subscriptions/{body['id']}")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("ResourceNotFound")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"notification": None}, "notification is required"),
        ({"entities": None}, "entities or watchedAttributes"),
        ({"notification": {"endpoint": {"uri": "ftp://x/y"}}}, "endpoint.uri"),
        ({"notification": {"endpoint": {"uri": "mqtt://broker:1883"}}}, "topic"),
        ({"timeInterval": 10, "watchedAttributes": ["powerState"]}, "cannot be given together"),
        ({"notificationTrigger": ["entityExploded"]}, "notificationTrigger"),
        ({"q": "powerState=="}, "invalid q"),
        ({"geoQ": {"georel": "near", "geometry": "Point"}}, "geoQ"),
        ({"entities": [{"id": "urn:x:1"}]}, "needs a type"),
        ({"throttling": -1}, "throttling"),
        ({"colour": "blue"}, "unknown subscription member"),
        ({"notification": {"endpoint": {"uri": "http://h/n"}, "format": "xml"}}, "format"),
        ({"id": "not a URI"}, "id must be a URI"),
        ({"expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt is in the past"),
        ({"expiresAt": "tomorrow"}, "expiresAt"),
    ],
)
def test_invalid_subscriptions_are_refused_with_problem_details(hub, change, message):
    body = subscription("http://127.0.0.1:9/notify")
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    response = hub.request("POST", "/subscriptions", body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"].endswith("BadRequestData")
    assert message in problem["detail"]
    assert read(hub, "/subscriptions").json() == []


def test_duplicate_subscription_and_writes_need_a_key(hub):
    body = subscription("http://127.0.0.1:9/notify")
    subscribe(hub, body)
    again = hub.request("POST", "/subscriptions", body)
    assert again.status_code == 409 and again.json()["type"].endswith("AlreadyExists")
    anonymous = hub.client.get("/ngsi-ld/v1/subscriptions", headers={"NGSILD-Tenant": "alpha"})
    assert anonymous.status_code == 401


def test_subscriptions_stay_in_their_tenant(hub, hub_beta, webhook, notifier):
    alpha_id = subscribe(hub, subscription(webhook.url))
    assert read(hub_beta, "/subscriptions").json() == []
    assert read(hub_beta, f"/subscriptions/{alpha_id}").status_code == 404
    assert hub_beta.request("DELETE", f"/subscriptions/{alpha_id}").status_code == 404
    # A change in beta never notifies alpha's subscription.
    assert hub_beta.create(streetlight(1)).status_code == 201
    assert hub.create(streetlight(2)).status_code == 201
    (received,) = webhook.wait_for(1)
    time.sleep(0.3)
    assert len(webhook.received) == 1
    assert received.body["data"][0]["id"] == f"{STREETLIGHT}2"
    assert received.headers["NGSILD-Tenant"] == "alpha"


# ---------------------------------------------------------------- notifications


def test_update_of_a_watched_attribute_notifies(hub, webhook, notifier):
    assert hub.create(streetlight(1)).status_code == 201
    sid = subscribe(hub, subscription(webhook.url, watchedAttributes=["powerState"]))
    patch(hub, 1, dimmingLevel=20)  # not watched
    patch(hub, 1, powerState="off")
    (received,) = webhook.wait_for(1)
    body = received.body
    assert body["type"] == "Notification" and body["subscriptionId"] == sid
    assert body["id"].startswith("urn:ngsi-ld:Notification:")
    assert body["triggerReason"] == "attributeUpdated"
    (entity,) = body["data"]
    assert entity["powerState"] == {"type": "Property", "value": "off"}
    assert entity["dimmingLevel"]["value"] == 20
    assert received.headers["Content-Type"] == "application/json"
    assert "ngsi-ld-core-context" in received.headers["Link"]
    time.sleep(0.3)
    assert len(webhook.received) == 1

    status = wait_for_figures(hub, sid, lambda s: s["timesSent"] == 1)
    assert status["timesSent"] == 1 and status["status"] == "ok"
    assert "lastSuccess" in status and "lastFailure" not in status


def test_format_attributes_and_json_ld(hub, webhook, notifier):
    notification = {
        "endpoint": {
            "uri": webhook.url,
            "accept": "application/ld+json",
            "receiverInfo": [{"key": "X-Token", "value": "s3cret"}],
        },
        "format": "keyValues",
        "attributes": ["dimmingLevel"],
    }
    subscribe(hub, subscription(webhook.url, notification=notification))
    assert hub.create(streetlight(1, level=35)).status_code == 201
    (received,) = webhook.wait_for(1)
    body = received.body
    assert body["triggerReason"] == "attributeCreated"
    assert body["data"] == [{"id": f"{STREETLIGHT}1", "type": "Streetlight", "dimmingLevel": 35}]
    assert "ngsi-ld-core-context" in str(body["@context"])
    assert received.headers["Content-Type"] == "application/ld+json"
    assert received.headers["X-Token"] == "s3cret"


def test_entity_triggers_show_changes_and_deleted_attributes(hub, webhook, notifier):
    assert hub.create(streetlight(1)).status_code == 201
    subscribe(
        hub,
        subscription(
            webhook.url,
            notificationTrigger=["entityCreated", "attributeDeleted", "entityDeleted"],
        ),
    )
    subscribe(
        hub,
        subscription(
            webhook.url,
            notification={"endpoint": {"uri": webhook.url}, "showChanges": True},
            watchedAttributes=["dimmingLevel"],
        ),
    )
    assert hub.create(streetlight(2)).status_code == 201  # created: first subscription
    patch(hub, 1, dimmingLevel=80)  # updated: second, with the previous value
    response = hub.request("DELETE", f"/entities/{STREETLIGHT}1/attrs/powerState")
    assert response.status_code == 204
    assert hub.request("DELETE", f"/entities/{STREETLIGHT}2").status_code == 204
    received = webhook.wait_for(5)
    reasons = {r.body["triggerReason"]: r.body["data"][0] for r in received}
    assert set(reasons) == {
        "entityCreated",
        "attributeCreated",  # the second subscription's, for the new entity's dimmingLevel
        "attributeUpdated",
        "attributeDeleted",
        "entityDeleted",
    }
    assert reasons["entityCreated"]["id"] == f"{STREETLIGHT}2"
    assert reasons["attributeUpdated"]["dimmingLevel"] == {
        "type": "Property",
        "value": 80,
        "previousValue": 50.0,
    }
    assert reasons["attributeDeleted"]["powerState"]["value"] == "urn:ngsi-ld:null"
    assert reasons["entityDeleted"] == {
        "id": f"{STREETLIGHT}2",
        "type": "Streetlight",
        "deletedAt": reasons["entityDeleted"]["deletedAt"],
    }


def test_q_geo_and_id_pattern_select_entities(hub, webhook, notifier):
    subscribe(
        hub,
        subscription(
            webhook.url,
            entities=[{"type": "Streetlight", "idPattern": ".*:[0-9]$"}],
            q="dimmingLevel>=40",
            geoQ={
                "georel": "near;maxDistance==1000",
                "geometry": "Point",
                "coordinates": [0.69, 47.39],
            },
        ),
    )
    far = streetlight(3)
    far["location"]["value"]["coordinates"] = [2.35, 48.85]
    hub.create(far)  # out of the circle
    hub.create(streetlight(4, level=10))  # q false
    hub.create(streetlight(15))  # idPattern false
    hub.create(streetlight(5))  # all true
    (received,) = webhook.wait_for(1)
    time.sleep(0.3)
    assert len(webhook.received) == 1
    assert received.body["data"][0]["id"] == f"{STREETLIGHT}5"


def test_paused_and_expired_subscriptions_are_silent(hub, webhook, notifier):
    subscribe(hub, subscription(webhook.url, isActive=False))
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    expired = subscribe(hub, subscription(webhook.url, expiresAt=soon))
    assert read(hub, f"/subscriptions/{expired}").json()["status"] == "active"
    time.sleep(1.2)
    assert read(hub, f"/subscriptions/{expired}").json()["status"] == "expired"
    late = hub.request("PATCH", f"/subscriptions/{expired}", {"expiresAt": soon})
    assert late.status_code == 400 and "in the past" in late.json()["detail"]
    live = subscribe(hub, subscription(webhook.url, entities=[{"type": "Parking"}]))
    hub.create(streetlight(1))
    hub.create({"id": "urn:ngsi-ld:Parking:1", "type": "Parking"})
    (received,) = webhook.wait_for(1)
    time.sleep(0.3)
    assert len(webhook.received) == 1 and received.body["subscriptionId"] == live


def test_throttling_sends_the_latest_state_once_per_period(hub, webhook, notifier):
    assert hub.create(streetlight(1)).status_code == 201
    subscribe(hub, subscription(webhook.url, throttling=1))
    for level in (10, 20, 30, 40):
        patch(hub, 1, dimmingLevel=level)
    first, second = webhook.wait_for(2, timeout=5)
    assert first.body["data"][0]["dimmingLevel"]["value"] == 10
    assert second.body["data"][0]["dimmingLevel"]["value"] == 40
    assert second.at - first.at >= 0.9
    time.sleep(1.3)
    assert len(webhook.received) == 2


def test_time_interval_notifies_periodically(hub, webhook, notifier):
    hub.create(streetlight(1))
    hub.create(streetlight(2))
    subscribe(hub, subscription(webhook.url, timeInterval=1))
    received = webhook.wait_for(2, timeout=12)
    assert {e["id"] for e in received[0].body["data"]} == {f"{STREETLIGHT}1", f"{STREETLIGHT}2"}
    assert received[1].at - received[0].at >= 0.9


# ---------------------------------------------------------------- reliability


def test_failing_webhook_gets_every_notification_in_order_per_entity(hub, notifier):
    """Fault 1: the endpoint fails its first calls, then recovers."""
    hook = Webhook(fail_first=5)
    try:
        for number in (1, 2):
            assert hub.create(streetlight(number)).status_code == 201
        sid = subscribe(hub, subscription(hook.url, watchedAttributes=["dimmingLevel"]))
        for level in range(1, 11):
            for number in (1, 2):
                patch(hub, number, dimmingLevel=level)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = {b["id"]: b for b in hook.bodies()}
            if len(seen) == 20:
                break
            time.sleep(0.05)
        by_entity: dict[str, list[int]] = {}
        for body in hook.bodies():  # in order of receipt; duplicates (same id) are allowed
            entity = body["data"][0]
            values = by_entity.setdefault(entity["id"], [])
            value = entity["dimmingLevel"]["value"]
            if not values or values[-1] != value:
                values.append(value)
        assert by_entity == {
            f"{STREETLIGHT}1": list(range(1, 11)),
            f"{STREETLIGHT}2": list(range(1, 11)),
        }
        assert hook.calls >= 25
        status = wait_for_figures(hub, sid, lambda s: s.get("timesFailed", 0) >= 1)
        assert status["timesSent"] >= 20 and status["status"] == "ok"
    finally:
        hook.close()


def test_a_hanging_endpoint_delays_no_other_subscription(hub, webhook, notifier):
    """Fault 4: an endpoint that accepts connections and never answers."""
    hanging = Webhook(hang=True)
    try:
        assert hub.create(streetlight(1)).status_code == 201
        slow = {"endpoint": {"uri": hanging.url, "timeout": 8000}}
        subscribe(hub, subscription(hanging.url, notification=slow))
        subscribe(hub, subscription(webhook.url))
        started = time.monotonic()
        for level in range(1, 6):
            patch(hub, 1, dimmingLevel=level)
        received = webhook.wait_for(5, timeout=6)
        assert received[-1].at - started < 4  # well before the hanging one's 8 s timeout
        assert [r.body["data"][0]["dimmingLevel"]["value"] for r in received] == [1, 2, 3, 4, 5]
    finally:
        hanging.close()


def test_mqtt_endpoint_receives_notifications(hub, notifier, mqtt_url):
    from urllib.parse import urlsplit

    import orjson
    import paho.mqtt.client as mqtt

    parts = urlsplit(mqtt_url)
    topic = f"communs-test/{uuid.uuid4().hex}"
    messages: list[dict] = []
    arrived = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_client, _userdata, message):
        messages.append(orjson.loads(message.payload))
        arrived.set()

    listener.on_message = on_message
    listener.connect(parts.hostname, parts.port or 1883)
    listener.subscribe(topic, qos=1)
    listener.loop_start()
    try:
        time.sleep(0.3)
        endpoint = {
            "uri": f"mqtt://{parts.hostname}:{parts.port or 1883}/{topic}",
            "notifierInfo": [
                {"key": "MQTT-Version", "value": "mqtt5.0"},
                {"key": "MQTT-QoS", "value": "1"},
            ],
        }
        sid = subscribe(hub, subscription(endpoint["uri"], notification={"endpoint": endpoint}))
        hub.create(streetlight(7))
        assert arrived.wait(10), "no MQTT notification arrived"
        (message,) = messages
        assert message["metadata"]["Content-Type"] == "application/json"
        assert message["body"]["subscriptionId"] == sid
        assert message["body"]["data"][0]["id"] == f"{STREETLIGHT}7"
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_notifications_pending_at_a_crash_are_delivered_after_restart(database_url, db, tmp_path):
    """Fault 2: ``communs serve`` killed (SIGKILL) while notifications wait for a webhook
    that is down; after a restart, every one arrives, in order."""
    make_commune(db, "alpha", "37001")
    hook = Webhook(fail_first=10**9)
    env = {"COMMUNS_HUB_OPEN_WRITES": "true", "COMMUNS_JOB_BACKOFF_SECONDS": "0.05"}
    headers = {"NGSILD-Tenant": "alpha", "Content-Type": "application/json"}
    base = "/ngsi-ld/v1"
    try:
        with serve_process(database_url, tmp_path, env=env) as (process, url):
            client = httpx.Client(base_url=url + base, headers=headers)
            assert client.post("/entities", json=streetlight(1)).status_code == 201
            body = subscription(hook.url, watchedAttributes=["dimmingLevel"])
            assert client.post("/subscriptions", json=body).status_code == 201
            for level in range(1, 21):
                change = {"dimmingLevel": {"type": "Property", "value": level}}
                response = client.patch(f"/entities/{STREETLIGHT}1/attrs", json=change)
                assert response.status_code == 204
            deadline = time.monotonic() + 10
            while hook.calls < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert notifier_processes(tmp_path), "communs serve runs a notifier process"
            process.kill()
            process.wait(timeout=10)
            deadline = time.monotonic() + 10
            while notifier_processes(tmp_path) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not notifier_processes(tmp_path), "the notifier outlived communs serve"
        assert hook.received == []
        hook.fail_first = hook.calls  # the webhook is back
        with serve_process(database_url, tmp_path, env=env):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len({b["id"] for b in hook.bodies()}) < 20:
                time.sleep(0.05)
        levels = []
        for notification in hook.bodies():
            level = notification["data"][0]["dimmingLevel"]["value"]
            if not levels or levels[-1] != level:
                levels.append(level)
        assert levels == list(range(1, 21))
    finally:
        hook.close()


def test_notifications_are_compacted_with_the_subscriptions_context(hub, webhook, notifier):
    core = "https://uri.etsi.org/ngsi-ld/default-context/"
    hosted = {"@context": {"Lampadaire": f"{core}Streetlight", "niveau": f"{core}dimmingLevel"}}
    response = hub.request("POST", "/jsonldContexts", hosted)
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert url.startswith("http")
    subscribe(hub, subscription(webhook.url, jsonldContext=url))
    hub.create(streetlight(1, level=12))
    (received,) = webhook.wait_for(1)
    entity = received.body["data"][0]
    assert entity["type"] == "Lampadaire" and entity["niveau"]["value"] == 12
    assert url in received.headers["Link"]


def notifier_processes(data_dir) -> list[int]:
    """Pids of ``communs notify`` processes working for ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"notify" in command and f"COMMUNS_DATA_DIR={data_dir}".encode() in environment:
            found.append(int(entry.name))
    return found


def test_one_notifier_delivers_at_a_time(db):
    first, second = Leadership(db), Leadership(db)
    assert first._try()
    try:
        assert not second._try()
    finally:
        first.release()
    assert second._try()
    second.release()
