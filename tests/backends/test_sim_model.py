"""The simulated model on its own: token counting, deterministic text, stop strings, timing."""

from __future__ import annotations

import random

import pytest

from sparsegate.backends.sim.model import (
    NATURAL_MAX_TOKENS,
    NATURAL_MIN_TOKENS,
    VOCAB,
    TimingModel,
    chat_prompt_tokens,
    completion_prompt_tokens,
    plan_choice,
    text_tokens,
)

ALPHABET = "aZ 09.,\n\t" + "é" + "漢字" + "🙂" + "\u0000"


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 300)))


@pytest.mark.parametrize("seed", range(5))
def test_prompt_tokens_never_exceed_bytes_plus_8_per_message(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        contents = [_random_text(rng) for _ in range(rng.randint(1, 6))]
        utf8_bytes = sum(len(content.encode()) for content in contents)
        assert chat_prompt_tokens(contents) <= utf8_bytes + 8 * len(contents)
        assert completion_prompt_tokens(contents[0]) <= len(contents[0].encode()) + 8


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é", 1), ("🙂🙂", 2), ("x" * 4000, 1000)]
)
def test_text_tokens_is_ceil_of_utf8_bytes_over_4(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_chat_counts_4_per_message_and_3_for_the_reply() -> None:
    assert chat_prompt_tokens(["abcd", ""]) == (1 + 4) + (0 + 4) + 3


def test_same_prompt_same_text_and_choices_differ() -> None:
    first = plan_choice("hello", 0, max_tokens=None, room=10_000)
    again = plan_choice("hello", 0, max_tokens=None, room=10_000)
    other_choice = plan_choice("hello", 1, max_tokens=None, room=10_000)
    other_prompt = plan_choice("hello!", 0, max_tokens=None, room=10_000)
    assert first == again
    assert first.text != other_choice.text
    assert first.text != other_prompt.text
    assert NATURAL_MIN_TOKENS <= first.tokens <= NATURAL_MAX_TOKENS
    assert first.finish_reason == "stop"
    assert all(word in VOCAB for word in first.text.split(" "))


def test_max_tokens_cuts_with_length_and_keeps_the_prefix() -> None:
    full = plan_choice("prefix test", 0, max_tokens=None, room=10_000)
    cut = plan_choice("prefix test", 0, max_tokens=3, room=10_000)
    assert cut.tokens == 3
    assert cut.finish_reason == "length"
    assert full.pieces[:3] == cut.pieces


def test_max_tokens_above_natural_length_still_stops_naturally() -> None:
    full = plan_choice("natural", 0, max_tokens=None, room=10_000)
    roomy = plan_choice("natural", 0, max_tokens=full.tokens + 50, room=10_000)
    assert roomy == full


def test_ignore_eos_runs_to_max_tokens() -> None:
    plan = plan_choice("bench", 0, max_tokens=200, room=10_000, ignore_eos=True)
    assert plan.tokens == 200
    assert plan.finish_reason == "length"


def test_context_room_caps_the_output() -> None:
    plan = plan_choice("tight", 0, max_tokens=None, room=2)
    assert plan.tokens == 2
    assert plan.finish_reason == "length"


def test_stop_string_truncates_before_the_match() -> None:
    full = plan_choice("stop here", 0, max_tokens=None, room=10_000)
    stop = full.text.split(" ")[3]
    plan = plan_choice("stop here", 0, max_tokens=None, room=10_000, stop=["never-there", stop])
    assert plan.text == full.text[: full.text.find(stop)]
    assert plan.finish_reason == "stop"
    assert plan.matched_stop == stop
    assert plan.tokens <= 4  # the tokens forming the match were generated, and count


def test_stop_string_spanning_two_tokens() -> None:
    full = plan_choice("span", 0, max_tokens=None, room=10_000)
    words = full.text.split(" ")
    stop = f"{words[1][-2:]} {words[2][:2]}"
    plan = plan_choice("span", 0, max_tokens=None, room=10_000, stop=[stop])
    assert plan.text == full.text[: full.text.find(stop)]
    assert plan.matched_stop == stop


def test_timing_model() -> None:
    timing = TimingModel(ttft_base_ms=10, ttft_per_1k_prompt_tokens_ms=20, itl_ms=2, itl_per_running_ms=0.5)
    assert timing.ttft_s(2000) == pytest.approx(0.05)
    assert timing.itl_s(4) == pytest.approx(0.004)
