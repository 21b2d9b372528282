"""The OpenAI engine's reachability check and its lazily imported SDK, against the loopback test server."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from fake_openai import Behaviour

from kiosk.config import OpenAIConfig, Secret
from kiosk.errors import SpeechError
from kiosk.speech.openai_engine import OpenAIEngine, base_url


def engine_for(url: str | None, key: str | None = "sk-test-not-secret") -> OpenAIEngine:
    cfg = OpenAIConfig(base_url=url, connect_timeout_s=1, first_byte_timeout_s=1)
    return OpenAIEngine(cfg, Secret(key) if key else None)


async def probe_problem(engine: OpenAIEngine) -> SpeechError | None:
    try:
        await engine.probe()
    except SpeechError as exc:
        return exc
    finally:
        await engine.aclose()
    return None


async def test_a_reachable_server_that_accepts_the_key_passes(server):
    assert await probe_problem(engine_for(f"{server.url}/v1")) is None
    assert server.model_requests[-1].authorization == "Bearer sk-test-not-secret"


@pytest.mark.parametrize(
    ("behaviour", "kind", "words"),
    [
        (Behaviour(api_key="other"), "auth", "API key was refused (401)"),
        (Behaviour(models_status=403), "auth", "API key was refused (403)"),
        (Behaviour(models_status=429, error_code="insufficient_quota"), "quota", "run out of credit"),
        (Behaviour(models_status=503, error_message="overloaded"), "transient", "503 Service Unavailable: overloaded"),
        (Behaviour(models_status=404, error_message="no such route"), "other", "404 Not Found: no such route"),
    ],
)
async def test_each_refusal_is_named(server, behaviour, kind, words):
    server.behaviour = behaviour
    problem = await probe_problem(engine_for(f"{server.url}/v1"))
    assert problem is not None and words in str(problem)
    assert problem.kind == kind
    assert "sk-test" not in str(problem)


async def test_nothing_listening_is_a_transient_problem(unused_tcp_port):
    problem = await probe_problem(engine_for(f"http://127.0.0.1:{unused_tcp_port}/v1"))
    assert problem is not None and problem.kind == "transient" and "cannot connect" in str(problem)


async def test_a_server_that_never_answers_is_bounded():
    async def listen_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)  # cancelled when the server closes

    silent = await asyncio.start_server(listen_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        problem = await asyncio.wait_for(probe_problem(engine_for(f"http://127.0.0.1:{port}/v1")), 10)
        assert problem is not None and problem.kind == "transient" and "no answer" in str(problem)
        assert time.monotonic() - started < 5  # connect 1 s + first byte 1 s, with room for a slow machine
    finally:
        silent.close()


async def test_no_key_is_an_auth_problem_without_a_request(server):
    problem = await probe_problem(engine_for(f"{server.url}/v1", key=None))
    assert problem is not None and problem.kind == "auth" and "OPENAI_API_KEY" in str(problem)
    assert server.model_requests == []


def test_the_address_is_found_as_the_sdk_finds_it(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert base_url(OpenAIConfig()) == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert base_url(OpenAIConfig()) == "http://127.0.0.1:9/v1"
    assert base_url(OpenAIConfig(base_url="http://127.0.0.1:8/v1")) == "http://127.0.0.1:8/v1"


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from kiosk.config import OpenAIConfig, Secret
    from kiosk.service import Service  # everything `kiosk run` loads
    from kiosk.speech.openai_engine import OpenAIEngine

    async def main():
        engine = OpenAIEngine(OpenAIConfig(base_url=sys.argv[1]), Secret("sk-test-not-secret"))
        await engine.probe()
        after_probe = "openai" in sys.modules
        audio = []
        await engine.synthesize("Hello.", audio.append)
        await engine.aclose()
        after_line = "openai" in sys.modules
        print(json.dumps({"after_probe": after_probe, "after_line": after_line, "bytes": len(b"".join(audio))}))

    asyncio.run(main())
    """
)


async def test_the_sdk_is_loaded_only_when_a_line_is_synthesized(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, f"{server.url}/v1", env=env, stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0
    seen = json.loads(out)
    assert seen["after_probe"] is False, "the reachability check loaded the SDK"
    assert seen["after_line"] is True and seen["bytes"] > 0
