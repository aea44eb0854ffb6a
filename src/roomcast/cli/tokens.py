"""``roomcast token``: sign a token offline, as ``POST /v1/tokens`` issues them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from roomcast.cli.root import console


def token(
    key: Annotated[
        str,
        typer.Option(
            "--key", help="The signing key, NAME:SECRET[:CAPABILITY_JSON], as given to serve."
        ),
    ],
    client_id: Annotated[str, typer.Option("--client-id", help="Who the token is for.")],
    capability: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--capability", help="Capability JSON (default: the key's own)."),
    ] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds until it expires (max 86400).")] = 3600,
) -> None:
    """Print a signed token (offline; as POST /v1/tokens issues them)."""
    from roomcast.protocol.capabilities import Capability
    from roomcast.protocol.errors import RoomcastError
    from roomcast.protocol.keys import ApiKey, KeySpecError, issue_token

    try:
        signing_key = ApiKey.parse(key)
    except KeySpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--key") from None
    try:
        wanted = Capability.parse(capability) if capability is not None else None
        issued = issue_token(signing_key, client_id, wanted, ttl)
    except RoomcastError as exc:
        console.print(f"error {exc.code}: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    print(issued.token)
