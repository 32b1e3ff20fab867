"""Chat records: `{"messages": [{"role": "system" | "user" | "assistant", "content": "…"}, …]}`,
the format users of chat models already have. The rules a conversation follows, checked where a
file is uploaded, where a job is created and where the worker reads it, each problem said with
the turn at fault (`messages[2].role`).

A record is a chat record when its `messages` field is a list; a file holds chat records only or
none (a text column that happens to be called `messages` is not chat). A conversation ending with
the user's turn is a prompt with no answer yet. Pure standard library: the API checks uploads
with it; rendering a conversation with a tokenizer's chat template is `chat_template`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAT_COLUMN = "messages"
ROLES = ("system", "user", "assistant")
Message = Mapping[str, Any]


@dataclass(frozen=True)
class ChatProblem:
    """What is wrong with a conversation: `where` names the turn or field (`messages[1].role`),
    `message` says it, starting with `where`."""

    where: str
    message: str


def is_chat(record: Mapping[str, Any]) -> bool:
    return isinstance(record.get(CHAT_COLUMN), list)


def _shown(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'JSON object'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _turn_problem(index: int, turn: Any) -> ChatProblem | None:
    where = f"{CHAT_COLUMN}[{index}]"
    if not isinstance(turn, Mapping):
        return ChatProblem(where, f'{where} must be an object with "role" and "content", '
                                  f"got {_shown(turn)}")
    role = turn.get("role")
    if role not in ROLES:
        said = "it is missing" if role is None else f"got {_shown(role)}"
        return ChatProblem(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, "
                                            f"{said}")
    content = turn.get("content")
    if not isinstance(content, str):
        said = "is missing" if content is None and "content" not in turn else \
            f"must be a string, got {_shown(content)}"
        return ChatProblem(f"{where}.content", f"{where}.content {said}")
    if not content.strip():
        return ChatProblem(f"{where}.content", f"{where}.content is empty")
    return None


def conversation_problem(messages: Any, *, answerable: bool = False) -> ChatProblem | None:
    """What is wrong with one record's `messages`; None for a conversation: a non-empty list of
    {"role", "content"} turns, each role system, user or assistant, each content a non-empty
    string, and a user turn before any assistant turn. `answerable` (a conversation the model is
    to answer): its last turn is the user's."""
    if not isinstance(messages, list):
        return ChatProblem(CHAT_COLUMN, f'{CHAT_COLUMN} must be a list of {{"role", "content"}} '
                                        f"turns, got {_shown(messages)}")
    if not messages:
        return ChatProblem(CHAT_COLUMN, f"{CHAT_COLUMN} is empty: a conversation needs a user turn")
    for index, turn in enumerate(messages):
        problem = _turn_problem(index, turn)
        if problem is not None:
            return problem
    roles = [turn["role"] for turn in messages]
    if "user" not in roles:
        return ChatProblem(CHAT_COLUMN, f"{CHAT_COLUMN} has no user turn: a conversation starts "
                                        "with the user's (after an optional system turn)")
    first_answer = roles.index("assistant") if "assistant" in roles else len(roles)
    if first_answer < roles.index("user"):
        where = f"{CHAT_COLUMN}[{first_answer}]"
        return ChatProblem(where, f"{where} is an assistant turn before any user turn: a "
                                  "conversation starts with the user's (after an optional system "
                                  "turn)")
    if answerable and roles[-1] != "user":
        where = f"{CHAT_COLUMN}[{len(roles) - 1}]"
        return ChatProblem(where, f"{where} is the {roles[-1]}'s turn: end the conversation with "
                                  "the user's, the turn the model answers")
    return None


def is_prompt_only(messages: Sequence[Message]) -> bool:
    """A conversation whose last turn is the user's: a prompt with no answer yet."""
    return bool(messages) and messages[-1].get("role") == "user"


class ChatFileCheck:
    """Follows a file's records in order: a chat record must hold a sound conversation, and a
    file holds chat records only or none. `problem` says what is wrong with the record at
    `line`, or None."""

    def __init__(self) -> None:
        self._chat: bool | None = None
        self._first_line = 0

    def problem(self, record: Mapping[str, Any], line: int) -> str | None:
        chat = is_chat(record)
        if self._chat is None:
            self._chat, self._first_line = chat, line
        elif chat != self._chat:
            first = f"line {self._first_line}"
            if chat:
                return (f"a chat record ({CHAT_COLUMN!r} is a list of turns) in a file whose "
                        f"records are not chat ({first} has no {CHAT_COLUMN!r} list): a file "
                        "holds chat records only or none")
            return (f"no {CHAT_COLUMN!r} list of turns, but the file's records are chat ({first} "
                    f"is): a file holds chat records only or none")
        if chat:
            found = conversation_problem(record[CHAT_COLUMN])
            return found.message if found is not None else None
        return None
