"""`GET /v1/webhooks/secret`: the keys that sign the caller's webhooks, to verify them with. Each
API key has its own, derived from the server's secrets, so that no tenant can forge another's."""

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import Owner
from serve_app.api.errors import NotFound
from serve_app.api.protocol import error_responses
from serve_app.config import SECRET_ENV, webhook_keys

webhook_keys_router = APIRouter(
    dependencies=[Depends(require_api_key)],
    responses=error_responses({401: "Missing or wrong API key", 404: "Webhooks are not enabled on this server"}),
)


class WebhookSecret(BaseModel):
    object: str = "webhook_secret"
    secrets: list[str] = Field(
        description="`whsec_<base64>` keys, newest first: each event is signed with every one (a signature "
        "each in `webhook-signature`), so during a rotation either verifies."
    )


@webhook_keys_router.get("/v1/webhooks/secret", response_model=WebhookSecret)
async def webhook_secret(owner: Owner) -> WebhookSecret:
    """The keys that sign this API key's webhooks, for a Standard Webhooks library to verify them."""
    keys = webhook_keys(owner)
    if not keys:
        raise NotFound(f"Webhooks are not enabled on this server (its operator sets {SECRET_ENV}).")
    return WebhookSecret(secrets=keys)
