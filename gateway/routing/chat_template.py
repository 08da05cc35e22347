"""A model's own chat template, rendered as the worker renders it, so message counts include its framing.

`tokenizer.json` has no chat template; Hugging Face model folders keep it beside it, in `chat_template.jinja`
or as `chat_template` in `tokenizer_config.json`. When one is found, messages are rendered with it the way
`transformers.apply_chat_template` (and so SGLang) does: a sandboxed Jinja environment with `trim_blocks` and
`lstrip_blocks`, `add_generation_prompt=True`, the special tokens from the config, `raise_exception`,
`strftime_now` and a `tojson` that keeps non-ASCII text. The rendered text is then encoded without adding
special tokens, as SGLang does for chat prompts, which gives the exact prompt length.

Jinja2 is optional: without it, or when a template fails to render a request, counting falls back to the
generic framing of `tokens` (an upper bound for common templates).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, dict) else None
    return content if isinstance(content, str) else None


def _flatten_content(message: dict[str, Any]) -> dict[str, Any]:
    """Text parts joined into one string, as workers do for text-only templates."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return {**message, "content": "\n".join(texts)}


class ChatTemplate:
    def __init__(self, source: str, tool_source: str | None, specials: dict[str, str]) -> None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source)
        self._tool_template = env.from_string(tool_source) if tool_source else None
        self._specials = specials

    def render(self, messages: list[dict[str, Any]], tools: Any = None) -> str:
        template = self._tool_template if tools and self._tool_template is not None else self._template
        return template.render(
            messages=[_flatten_content(m) for m in messages],
            tools=tools or None,
            add_generation_prompt=True,
            **self._specials,
        )

    @classmethod
    def beside(cls, tokenizer_json: Path) -> ChatTemplate | None:
        """The template in the tokenizer's folder, or None if there is none (or Jinja2 is not installed)."""
        folder = tokenizer_json.parent
        config: dict[str, Any] = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable %s: %s", config_path, exc)
        source: str | None = None
        tool_source: str | None = None
        jinja_path = folder / "chat_template.jinja"
        if jinja_path.is_file():
            source = jinja_path.read_text(encoding="utf-8")
        else:
            raw = config.get("chat_template")
            if isinstance(raw, str):
                source = raw
            elif isinstance(raw, list):  # named templates: [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
                source = named.get("default")
                tool_source = named.get("tool_use")
        if not source:
            return None
        specials = {name: text for name in _SPECIALS if (text := _token_text(config.get(name))) is not None}
        try:
            return cls(source, tool_source, specials)
        except ImportError:
            log.warning("jinja2 is not installed: counting %s without its chat template", tokenizer_json)
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends: a broken template is not fatal
            log.warning("chat template beside %s does not compile (%s): counting without it", tokenizer_json, exc)
        return None


class TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)
