"""The simulated worker as a real process, driven by the official `openai` SDK, as e2e tests will use it."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
from collections.abc import Iterator

import httpx
import openai
import pytest

from sparsegate.backends.sim import pick_free_port, spawn_sim, stop_sim, wait_ready
from sparsegate.backends.sim.cli import main

MODEL = "sim-proc"
FAST_FLAGS = ["--ttft-base-ms", "1", "--itl-ms", "1", "--log-level", "error"]


def _listening_url(proc: subprocess.Popen[bytes]) -> str:
    """The URL from the sim's one "serving ... on http://..." line, then wait until it answers."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "the sim printed nothing within 30 s"
    line = proc.stdout.readline().decode()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)$", line.strip())
    assert match, line
    wait_ready(match.group(1), timeout=10, proc=proc)
    return match.group(1)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    # Port 0: the sim binds a free port itself and prints it, so two test runs never race for one.
    proc = spawn_sim(0, MODEL, 4096, FAST_FLAGS, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        yield _listening_url(proc)
    finally:
        status = stop_sim(proc)
        proc.stdout.close()
        assert status in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down gracefully


@pytest.fixture
def client(sim_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim_url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_chat_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], extra_body={"rid": "proc-1"}
    )
    assert completion.id == "proc-1"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 3 + 4 + 3


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(text.split(" ")) == 5
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert len({chunk.id for chunk in chunks}) == 1


def test_completions(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole.choices[0].text


def test_models_and_context_error(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError, match="longer than the model's context length"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 20_000}])


def test_injected_503_reaches_the_sdk_as_internal_server_error(sim_url: str, client: openai.OpenAI) -> None:
    httpx.post(sim_url + "/sim/faults", json={"error_rate": 1.0, "error_status": 503}).raise_for_status()
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503
    finally:
        httpx.post(sim_url + "/sim/faults", json={"error_rate": 0.0}).raise_for_status()


def test_wait_ready_reports_a_sim_that_died() -> None:
    proc = spawn_sim(pick_free_port(), MODEL, 0, stderr=subprocess.DEVNULL)  # --max-context 0 is refused
    with pytest.raises(RuntimeError, match="exited with status 2"):
        wait_ready(f"http://127.0.0.1:{pick_free_port()}", timeout=30, proc=proc)
    assert proc.wait() == 2


def test_cli_main_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--drop-after-tokens" in capsys.readouterr().out
    assert main(["--max-context", "0"]) == 2
    assert main(["--error-rate", "2"]) == 2


def test_sigterm_ends_open_streams_cleanly() -> None:
    flags = ["--itl-ms", "20", "--log-level", "info"]
    proc = spawn_sim(0, MODEL, 4096, flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = _listening_url(proc)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=url) as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = (line for line in response.iter_lines() if line)
            assert next(lines).startswith("data: ")  # the stream is open
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        _, stderr = proc.communicate(timeout=10)
    finally:
        stop_sim(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2].removeprefix("data: "))["error"]["code"] == 503
    assert b"Traceback" not in stderr
    assert proc.returncode in (0, -signal.SIGTERM)
