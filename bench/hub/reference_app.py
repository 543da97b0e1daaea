"""The reference of the PATCH benchmark: a bare Starlette handler answering 204."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def patch_attrs(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


app = Starlette(
    routes=[Route("/ngsi-ld/v1/entities/{entity_id:path}/attrs", patch_attrs, methods=["PATCH"])]
)
