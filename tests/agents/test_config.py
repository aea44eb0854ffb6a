"""The agents file (`roomcast serve --agents FILE`) and the default agent."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from roomcast.agents.config import (
    DEFAULT_ANTHROPIC_MODEL,
    DEFAULT_OPENAI_MODEL,
    AgentConfig,
    AgentConfigError,
    default_agents,
    default_system_prompt,
    load_agents,
)
from roomcast.agents.providers import Script

DOCS = Path(__file__).parents[2] / "docs" / "agents.md"

FULL = """
[[agents]]
name = "ollie"
provider = "openai"
model = "llama3.1:8b"
base_url = "http://localhost:11434/v1"
api_key_env = "OLLAMA_KEY"
system_prompt = "You are ollie."
policy = "auto"
rooms = ["room:*", "team:general"]
tools = ["polls", "history_search", "mytools:weather"]
max_tokens = 500
temperature = 0.2
budget_tokens = 200000
budget_usd = 1.5
price_per_mtok_in = 0.15
price_per_mtok_out = 0.6
concurrency = "interrupt"
max_chain_depth = 2
max_agent_answers_per_min = 10
timeout_s = 30

[[agents]]
name = "scribe"
provider = "anthropic"
model = "claude-sonnet-4-5"

[[agents]]
name = "demo.bot"
provider = "scripted"
script = "demo-script.toml"
policy = "always"
"""

DEMO_SCRIPT = '[[replies]]\ntext = "Demo."\n'


def write(tmp_path: Path, text: str, name: str = "agents.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_full_file_parses(tmp_path: Path) -> None:
    write(tmp_path, DEMO_SCRIPT, "demo-script.toml")
    ollie, _, _ = load_agents(write(tmp_path, FULL))
    assert ollie == AgentConfig(
        name="ollie",
        provider="openai",
        model="llama3.1:8b",
        base_url="http://localhost:11434/v1",
        api_key_env="OLLAMA_KEY",
        system_prompt="You are ollie.",
        policy="auto",
        rooms=("room:*", "team:general"),
        tools=("polls", "history_search", "mytools:weather"),
        max_tokens=500,
        temperature=0.2,
        budget_tokens=200000,
        budget_usd=1.5,
        price_per_mtok_in=0.15,
        price_per_mtok_out=0.6,
        concurrency="interrupt",
        max_chain_depth=2,
        max_agent_answers_per_min=10,
        timeout_s=30.0,
    )
    assert ollie.key_env == "OLLAMA_KEY"


def test_defaults_fill_what_an_entry_leaves_out(tmp_path: Path) -> None:
    write(tmp_path, DEMO_SCRIPT, "demo-script.toml")
    _, scribe, demo = load_agents(write(tmp_path, FULL))
    assert scribe.policy == "mention"
    assert scribe.rooms == ("room:*",)
    assert scribe.tools == ()
    assert scribe.system_prompt == default_system_prompt("scribe")
    assert (scribe.max_tokens, scribe.temperature) == (1024, None)
    assert (scribe.budget_tokens, scribe.budget_usd) == (None, None)
    assert (scribe.price_per_mtok_in, scribe.price_per_mtok_out) == (0.0, 0.0)
    assert scribe.concurrency == "queue"
    assert scribe.max_chain_depth == 3
    assert scribe.max_agent_answers_per_min == 60
    assert scribe.timeout_s == 60.0
    assert scribe.base_url is None
    assert scribe.key_env == "ANTHROPIC_API_KEY"
    # A scripted agent needs no model; its script is found next to the agents file.
    assert demo.model == "scripted"
    assert demo.script == str(tmp_path / "demo-script.toml")
    assert demo.key_env is None


BAD = [
    (
        '[[agents]]\nname = "a"\nprovider = "gemini"\nmodel = "m"\n',
        "[[agents]] #1 ('a'): provider: must be one of openai, anthropic, scripted, ag-ui; "
        "got 'gemini'",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "openai"\nmodel = "m"\npolicy = "sometimes"\n',
        "[[agents]] #1 ('a'): policy: must be one of mention, auto, always; got 'sometimes'",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nconcurrency = "both"\n',
        "[[agents]] #1 ('a'): concurrency: must be one of queue, interrupt, parallel",
    ),
    ('[[agents]]\nprovider = "scripted"\n', "[[agents]] #1: name: missing (required)"),
    ('[[agents]]\nname = "a"\n', "[[agents]] #1 ('a'): provider: missing (required"),
    (
        '[[agents]]\nname = "a"\nprovider = "openai"\n',
        "[[agents]] #1 ('a'): model: missing (required for provider 'openai')",
    ),
    (
        '[[agents]]\nname = "@bob"\nprovider = "scripted"\n',
        "[[agents]] #1: name: '@bob' is not a usable name",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\n'
        '[[agents]]\nname = "b"\nprovider = "scripted"\n'
        '[[agents]]\nname = "a"\nprovider = "scripted"\n',
        "[[agents]] #3 ('a'): name: 'a' is already used by [[agents]] #1",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nrooms = ["room:*:x"]\n',
        "[[agents]] #1 ('a'): rooms: room pattern 'room:*:x': `*` may only stand as a whole "
        "last segment",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nrooms = ["room*"]\n',
        "rooms: room pattern 'room*'",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nrooms = ["room:"]\n',
        "rooms: room pattern 'room:' has an empty segment",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nrooms = "room:*"\n',
        "rooms: must be a list of strings",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nmodle = "x"\n',
        "[[agents]] #1: unknown key 'modle' (known keys: name, provider, model",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nmax_tokens = "lots"\n',
        "[[agents]] #1 ('a'): max_tokens: must be an integer, not 'lots'",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nmax_tokens = 0\n',
        "max_tokens: must be >= 1, not 0",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\ntemperature = 3.5\n',
        "temperature: must be between 0 and 2",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nbudget_usd = -1\n',
        "budget_usd: must be >= 0, not -1",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\ntimeout_s = 0\n',
        "timeout_s: must be > 0, not 0",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nmax_concurrent_answers = 0\n',
        "max_concurrent_answers: must be >= 1, not 0",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "openai"\nmodel = "m"\nbase_url = "localhost:1"\n',
        "base_url: must be an http:// or https:// URL",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "openai"\nmodel = "m"\napi_key_env = "my key"\n',
        "api_key_env: 'my key' is not an environment variable name",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "openai"\nmodel = "m"\nscript = "s.toml"\n',
        "script: only scripted agents take a script",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\ntools = ["two words"]\n',
        "tools: tool name 'two words' is not a valid identifier",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nscript = "missing.toml"\n',
        "[[agents]] #1 ('a'): script: ",
    ),
    (
        '[[agents]]\nname = "a"\nprovider = "scripted"\nscript = "agents.toml"\n',
        "script: ",
    ),
    ("agent = []\n", "unknown top-level key 'agent'"),
    ("", "no agents: add at least one [[agents]] table"),
    ("[[agents]\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_input_is_refused_naming_file_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AgentConfigError) as caught:
        load_agents(path)
    error = str(caught.value)
    assert error.startswith(f"{path}: ")
    assert message in error


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"nope\.toml: cannot read the agents file"):
        load_agents(tmp_path / "nope.toml")


def test_without_any_model_the_default_agent_is_scripted() -> None:
    [agent] = default_agents({})
    assert (agent.name, agent.provider, agent.policy) == ("assistant", "scripted", "mention")
    assert agent.rooms == ("room:*",)
    assert agent.script is None  # the built-in "no model is configured" script


def test_an_openai_key_picks_openai_with_roomcast_model() -> None:
    [agent] = default_agents(
        {"OPENAI_API_KEY": "sk-1", "ROOMCAST_MODEL": "gpt-5-nano", "ANTHROPIC_API_KEY": "x"}
    )
    assert (agent.provider, agent.model, agent.base_url) == ("openai", "gpt-5-nano", None)
    assert agent.key_env == "OPENAI_API_KEY"


def test_an_openai_base_url_alone_picks_a_local_server() -> None:
    [agent] = default_agents({"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert agent.provider == "openai"
    assert agent.base_url == "http://localhost:11434/v1"
    assert agent.model == DEFAULT_OPENAI_MODEL


def test_an_anthropic_key_picks_anthropic() -> None:
    [agent] = default_agents({"ANTHROPIC_API_KEY": "sk-ant-1"})
    assert (agent.provider, agent.model) == ("anthropic", DEFAULT_ANTHROPIC_MODEL)
    [agent] = default_agents({"ANTHROPIC_API_KEY": "sk-ant-1", "ROOMCAST_MODEL": "claude-x"})
    assert agent.model == "claude-x"


def toml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_examples_in_the_agents_guide_load(tmp_path: Path) -> None:
    agents_file, script_file, ag_ui_file, mcp_file = toml_blocks(DOCS.read_text())
    (tmp_path / "demo-script.toml").write_text(script_file)
    [helper] = load_agents(write(tmp_path, mcp_file))
    assert helper.tools == ("builtin", "mcp:files", "mcp:tickets")
    files, tickets = helper.mcp_servers
    assert (files.name, files.command, files.tools_deny) == ("files", "npx", ("write_*", "move_*"))
    assert (tickets.name, tickets.url) == ("tickets", "https://tickets.example.com/mcp")
    [planner] = load_agents(write(tmp_path, ag_ui_file))
    assert (planner.provider, planner.url) == ("ag-ui", "https://agents.example.com/planner")
    assert planner.headers_env == (("Authorization", "PLANNER_AUTH"),)
    path = write(tmp_path, agents_file)
    ollie, scribe, demo = load_agents(path)
    assert (ollie.provider, ollie.base_url) == ("openai", "http://localhost:11434/v1")
    assert (scribe.provider, scribe.policy, scribe.budget_usd) == ("anthropic", "auto", 2.0)
    assert demo.script is not None
    script = Script.load(demo.script)
    assert script.delay_ms == 30
    assert script.choose("a POLL please", 0).tool_calls[0].name == "create_poll"  # type: ignore[union-attr]


def test_the_python_example_in_the_agents_guide_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ROOMCAST_MODEL"):
        monkeypatch.delenv(name, raising=False)
    section = DOCS.read_text().split("## Providers from Python", 1)[1]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    exec(compile(code, str(DOCS), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert out.startswith("[scripted] No language model is configured")
    assert "out, $0.000000)" in out


def test_the_tool_example_in_the_agents_guide_defines_a_tool() -> None:
    from roomcast.agents.tools import resolve_tools, schema_of

    section = DOCS.read_text().split("### Tools", 1)[1].split("\n### ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    names: dict[str, object] = {"__name__": "docs_tool_example"}
    exec(compile(code, str(DOCS), "exec"), names)
    assert schema_of(names["weather"])["required"] == ["city"]  # type: ignore[arg-type]
    assert set(resolve_tools(("builtin",))) >= {"create_poll", "vote", "search_history"}
