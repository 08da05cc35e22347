"""What each choice of a request will emit, decided before any time passes.

Choice `p * n + i` is sample `i` of prompt `p` (SGLang's order for a completions batch with `n > 1`).

- Tool calls: with `tool_choice` `required` or a named function, every choice calls a tool; with `auto` a
  choice calls one unless the conversation's last message is a tool result (the model then answers in
  text, so an agent loop ends); `none` never calls. The tool is the named one, else one picked by the
  choice's seed; its arguments are JSON valid against the tool's `parameters` (`schema.generate`).
- `response_format` (json_object / json_schema): the text is JSON valid against the schema.
- Otherwise words (`model.plan_choice`).

Everything is seeded by the prompt, the choice index and the request's `seed`, so the same request gives
the same output on every worker.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

from .errors import BadRequest
from .model import ChoicePlan, ToolCallPlan, choice_key, choice_rng, plan_choice, plan_text
from .protocol import GenerationRequest, Prompt, Tool
from .schema import SchemaError, generate


def plan_choices(generation: GenerationRequest, max_context: int, *, reasoning: bool = False) -> list[ChoicePlan]:
    """One plan per choice, prompts in order and `n` samples each; with `reasoning` (a reasoning parser is
    configured) a chat text choice spends its first third (at least one token) reasoning."""
    prompts = generation.prompts or (Prompt(generation.prompt_key, generation.prompt_tokens),)
    plans: list[ChoicePlan] = []
    for prompt in prompts:
        for sample in range(generation.n):
            index = len(plans)
            plan = _plan(generation, prompt, index, sample, max_context - prompt.tokens)
            thinks = reasoning and generation.endpoint == "chat" and generation.response_format is None
            if thinks and plan.tool_call is None and plan.tokens >= 2:
                plan = replace(plan, reasoning=max(1, plan.tokens // 3))
            plans.append(plan)
    return plans


def _calls_tool(generation: GenerationRequest) -> bool:
    if not generation.tools or generation.tool_choice == "none":
        return False
    if generation.tool_choice == "auto":
        return not generation.tool_turn_done
    return True


def _pick_tool(generation: GenerationRequest, rng: random.Random) -> Tool:
    named = [t for t in generation.tools if t.name == generation.tool_choice]
    return named[0] if named else rng.choice(generation.tools)


def _plan(generation: GenerationRequest, prompt: Prompt, index: int, sample: int, room: int) -> ChoicePlan:
    key = choice_key(prompt.key, sample, generation.seed)
    rng = choice_rng(key)
    try:
        if _calls_tool(generation):
            tool = _pick_tool(generation, rng)
            arguments = json.dumps(generate(tool.parameters, rng), ensure_ascii=False)
            call = ToolCallPlan(id=f"call_{rng.getrandbits(96):024x}", name=tool.name)
            return plan_text(arguments, max_tokens=generation.max_tokens, room=room, seed_key=key, tool_call=call)
        if generation.response_format is not None:
            text = json.dumps(generate(generation.response_format, rng), ensure_ascii=False)
            return plan_text(text, max_tokens=generation.max_tokens, room=room, seed_key=key)
    except SchemaError as exc:
        raise BadRequest(f"Cannot build output for the schema: {exc}") from exc
    return plan_choice(
        prompt.key,
        sample,
        max_tokens=generation.max_tokens,
        room=room,
        stop=generation.stop,
        ignore_eos=generation.ignore_eos,
        seed=generation.seed,
    )
