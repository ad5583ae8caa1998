"""The operator's routes: load, unload, pin and unpin a model (`/v1/admin/models/<id>/...`).

They change what the server holds in memory, so they need an API key: where the spec sets
none, they answer only on a loopback host (as the playground does)."""

from __future__ import annotations

from collections.abc import Sequence

from quart import Response

from ..engine.residency import NotResident, Refused, Residents
from ..spec.settings import LOOPBACK_HOSTS, Spec
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable, json_response
from .models import ModelCard, find_card, placed

ACTIONS = ("load", "unload", "pin", "unpin")


def check_admin_allowed(spec: Spec) -> None:
    """Admin routes need keys (auth) unless only this machine can reach the server."""
    if not spec.auth.enabled and spec.host not in LOOPBACK_HOSTS:
        raise Forbidden(
            f"admin routes need API keys on a server listening on {spec.host}: set "
            "auth.api_keys_env or auth.api_keys_file in the spec"
        )


async def admin_model(
    spec: Spec, cards: Sequence[ModelCard], residents: Residents, model_id: str, action: str
) -> Response:
    """POST /v1/admin/models/<id>/<action>: the model's card once done."""
    check_admin_allowed(spec)
    if action not in ACTIONS:
        raise NotFound(f"no admin action '{action}'; the actions: {', '.join(ACTIONS)}")
    card = find_card(cards, model_id)
    if card.parent is not None:
        raise InvalidRequest(
            f"'{model_id}' runs on '{card.parent}' (an adapter or an endpoint); {action} "
            "the model itself",
            param="model",
        )
    try:
        if action == "load":
            tenant = await residents.load(model_id)
        elif action == "unload":
            tenant = await residents.unload_now(model_id)
        else:
            tenant = residents.pin(model_id, action == "pin")
    except Refused as exc:
        raise Conflict(str(exc)) from None
    except NotResident as exc:
        raise Unavailable(str(exc), exc.retry_after) from None
    return json_response(placed(card, tenant))
