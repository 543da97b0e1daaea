"""A small NGSI-LD test client."""

import orjson

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
BASE = "/ngsi-ld/v1"


class Hub:
    """An NGSI-LD client of one tenant, writing with that commune's API key."""

    def __init__(self, client, tenant: str, key: str) -> None:
        self.client, self.tenant, self.key = client, tenant, key

    def headers(self, extra: dict | None = None, write: bool = False) -> dict:
        headers = {"NGSILD-Tenant": self.tenant}
        if write:
            headers["Authorization"] = f"Bearer {self.key}"
        return {**headers, **(extra or {})}

    def request(self, method: str, path: str, body=None, headers=None, params=None):
        write = method in {"POST", "PATCH", "PUT", "DELETE"}
        extra = dict(headers or {})
        if body is not None:
            extra.setdefault("Content-Type", "application/json")
        return self.client.request(
            method,
            BASE + path,
            content=None if body is None else _json(body),
            headers=self.headers(extra, write),
            params=params,
        )

    def create(self, entity: dict, **kwargs):
        return self.request("POST", "/entities", entity, **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)


def _json(body) -> bytes:
    return orjson.dumps(body)
