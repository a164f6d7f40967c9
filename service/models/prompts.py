"""DeepSeek's SFT prompt format, per model family, as the reference code builds it.

DeepSeek's `VLChatProcessor.apply_sft_template_for_multi_turn_prompts` (the `deepseek`
conversation template, separator style `DeepSeek`) writes

    {system}\\n\\n{role}: {content}\\n\\n{role}:

and strips the result. The role strings are not the template's: they are whatever the
caller's messages carry, and DeepSeek's own examples (README, `demo/app*.py`) use
`<|User|>` / `<|Assistant|>` for Janus-Pro but plain `User` / `Assistant` for the original
Janus-1.3B and for JanusFlow. A checkpoint fed the other family's roles sees a prompt
format it was never trained on, so the roles are a property of the family.

Understanding prompts carry the processor's system prompt and the user turn
`<image_placeholder>\\n{question}`; generation prompts have no system prompt and end with
the family's image tag (`<begin_of_image>` for Janus/Janus-Pro, JanusFlow's
`<｜begin▁of▁generation｜>`).

A conversation (`dialogue`) follows the same template over several turns: each message
stripped, a user turn ending with a blank line, an assistant turn with the EOS string
(the template's `sep` / `sep2`), then the open assistant turn. Its system message, when
given, replaces the processor's; the image placeholder starts the turn that carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.models.base import Turn
from service.models.tokens import ASSISTANT, BOG, BOI, EOS, IMAGE, USER

# VLChatProcessor.system_prompt, the same in janus/models and janus/janusflow/models.
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class PromptFormat:
    user: str
    assistant: str
    image_tag: str  # appended to a generation prompt

    def conversation(self, user_text: str, system: str = "") -> str:
        """One user turn and an open assistant turn, as DeepSeek's template renders it."""
        return self.dialogue([("user", user_text)], system)

    def dialogue(self, turns: Sequence[tuple[str, str]], system: str = "") -> str:
        """(role, text) turns, role "user" or "assistant", then an open assistant turn:
        `apply_sft_template_for_multi_turn_prompts` with the `deepseek` template."""
        out = f"{system}\n\n" if system else ""
        for role, text in turns:
            name, end = (self.user, "\n\n") if role == "user" else (self.assistant, EOS)
            out += f"{name}: {text.strip()}{end}"
        return f"{out}{self.assistant}:".strip()

    def understanding(self, question: str, messages: Sequence[Turn] = ()) -> str:
        """An understanding prompt: one question under the processor's system prompt, or a
        conversation (`messages`, whose system message replaces the processor's)."""
        if not messages:
            return self.conversation(f"{IMAGE}\n{question}", SYSTEM_PROMPT)
        # The image goes to the turn flagged for it, else to the first user turn.
        flagged = [m for m in messages if m.image and m.role == "user"]
        carrier = flagged[0] if flagged else next(m for m in messages if m.role == "user")
        system, turns = SYSTEM_PROMPT, []
        for m in messages:
            if m.role == "system":
                system = m.content.strip()
            else:
                turns.append((m.role, f"{IMAGE}\n{m.content}" if m is carrier else m.content))
        return self.dialogue(turns, system)

    def generation(self, prompt: str) -> str:
        return self.conversation(prompt) + self.image_tag

    def chat_template(self) -> str:
        """A Jinja chat template for transformers' processors that renders this format
        (user turns end with a blank line, assistant turns with EOS). The runners build
        their prompts with the methods above; this is what a saved or converted
        checkpoint carries for other tools."""
        return (
            "{%- for message in messages -%}"
            "{%- set role = message['role'] | lower -%}"
            "{%- if role == 'user' -%}" + self.user + ":{{ ' ' }}"
            "{%- elif role == 'assistant' -%}" + self.assistant + ":{{ ' ' }}"
            "{%- else -%}{{ message['role'] | capitalize }}:{{ ' ' }}{%- endif -%}"
            "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
            "{%- else -%}{%- for part in message['content'] -%}"
            "{%- if part['type'] == 'image' -%}" + IMAGE + "{{ '\\n' }}"
            "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
            "{%- endfor -%}{%- endif -%}"
            "{%- if role == 'user' -%}{{ '\\n\\n' }}{%- else -%}" + EOS + "{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}" + self.assistant + ":{%- endif -%}"
        )


JANUS_PRO_FORMAT = PromptFormat(USER, ASSISTANT, BOI)
JANUS_FORMAT = PromptFormat("User", "Assistant", BOI)  # Janus-1.3B
JANUSFLOW_FORMAT = PromptFormat("User", "Assistant", BOG)

# By model family (the catalog's names).
FORMATS = {"janus": JANUS_FORMAT, "janus-pro": JANUS_PRO_FORMAT, "janusflow": JANUSFLOW_FORMAT}


def format_of(family: str) -> PromptFormat:
    return FORMATS[family]
