"""Readers: each API's body becomes chat-shaped texts for counting, the budget and the follow-up fields."""

from __future__ import annotations

from sparsegate.gateway.agent_protocol import EmbeddingRequest, MessagesRequest, ResponsesRequest
from sparsegate.gateway.endpoints.intake import read_embeddings, read_messages, read_responses
from sparsegate.gateway.routing.tokens import TokenCounter


def test_responses_items_become_messages_and_follow_ups_are_kept() -> None:
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "name": "weather", "arguments": '{"city":"Paris"}', "call_id": "c1"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "previous_response_id": "resp_abc",
            "max_output_tokens": 64,
            "store": False,
            "stream": True,
            "reasoning": {"effort": "low"},
        }
    )
    intake = read_responses(body)
    assert intake.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"role": "assistant", "content": 'weather{"city":"Paris"}'},
        {"role": "tool", "content": "sunny"},
    ]
    assert (intake.max_tokens, intake.stream, intake.store, intake.previous_response_id) == (
        64,
        True,
        False,
        "resp_abc",
    )
    assert intake.payload["reasoning"] == {"effort": "low"}  # unknown fields go on to the worker
    counted = TokenCounter(None).count(messages=intake.messages)
    assert counted >= len("Be brief.Weather?weather" + '{"city":"Paris"}' + "sunny")


def test_anthropic_blocks_are_counted_as_text() -> None:
    body = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]},
            ],
        }
    )
    intake = read_messages(body)
    assert intake.max_tokens == 100
    assert intake.messages == [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": 'f{"a":1}'}]},
        {"role": "user", "content": [{"type": "text", "text": "42"}]},
    ]


def test_embeddings_generate_nothing() -> None:
    intake = read_embeddings(EmbeddingRequest.model_validate({"model": "m", "input": ["a", "b"]}))
    assert intake.max_tokens == 0 and intake.prompt == ["a", "b"] and not intake.stream
