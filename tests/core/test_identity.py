"""§6 reserved identities: a key's ``key:NAME`` and the agents' names, whoever asks."""

from __future__ import annotations

import pytest

from roomcast.core.identity import Identities
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.errors import Forbidden, Unauthorized
from roomcast.protocol.keys import ApiKey, issue_token
from roomcast.settings import Settings

OPS = ApiKey("ops", "s" * 32, ALL)
OTHER = ApiKey("other", "o" * 32, ALL)


def identities() -> Identities:
    settings = Settings(allow_anonymous=True, keys=(f"ops:{OPS.secret}", f"other:{OTHER.secret}"))
    ids = Identities(settings)
    ids.reserved = frozenset({"assistant"})
    return ids


@pytest.mark.parametrize(
    "client_id", ["key:ops", "KEY:ops", "key:nobody", "assistant", "ASSISTANT"]
)
def test_anonymous_and_token_callers_may_not_take_a_reserved_identity(client_id: str) -> None:
    ids = identities()
    with pytest.raises(Unauthorized):
        ids.anonymous(client_id)
    with pytest.raises(Unauthorized):
        ids.token(issue_token(OPS, client_id).token)
    with pytest.raises(Forbidden):
        ids.issue(f"ops:{OPS.secret}", client_id, None, 60)
    alice = ids.anonymous("alice")
    with pytest.raises(Unauthorized):
        ids.renew(alice, issue_token(OPS, client_id).token)


def test_a_key_speaks_as_itself_or_a_name_of_its_choosing_but_not_as_another_key() -> None:
    ids = identities()
    assert ids.key(f"ops:{OPS.secret}").principal.client_id == "key:ops"
    assert ids.key(f"ops:{OPS.secret}", "key:ops").principal.client_id == "key:ops"
    assert ids.key(f"ops:{OPS.secret}", "assistant").principal.client_id == "assistant"
    assert ids.key(f"ops:{OPS.secret}", "alice").principal.client_id == "alice"
    with pytest.raises(Unauthorized, match="another API key"):
        ids.key(f"other:{OTHER.secret}", "key:ops")
    assert ids.anonymous("anon-1234abcd").client_id == "anon-1234abcd"  # nobody special
    assert ids.anonymous("keyless").client_id == "keyless"
