"""Property-based checks of the JSON API from its own OpenAPI description: whatever
the input, no route answers a server error."""

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from communs.core import service
from communs.core.web import create_app

FUZZED_PATHS = r"^(/api/communes|/\{commune\}/api/|/healthz|/readyz)"


def test_json_api_never_answers_a_server_error(db, settings):
    commune = db.write(
        service.create_commune, slug="alpha", name="Alpha", insee_code="37001", boundary=None
    )
    key = db.write(
        service.create_api_key, commune_id=commune.id, name="fuzz", scopes=["communes:read"]
    )
    app = create_app(settings, db)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app).include(
        path_regex=FUZZED_PATHS
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=30, deadline=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key.secret}"}
            if "commune" in (case.path_parameters or {}):
                case.path_parameters["commune"] = "alpha"
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: " + (
                response.text
            )

        check()
