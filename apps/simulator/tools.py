"""Tools in the simulated service: function calls and MCP, told by the conversation. No Django.

The simulated model calls a tool when the latest user message asks it to, in its text:

- `#call:NAME` or `#call:NAME {"city": "Oslo"}` — when the response's tools (the response's own
  `tools`, else the session's) hold a `function` tool named NAME, the response's output is one
  `function_call` item (`call_id` `call_…`, `arguments` the JSON object given, else `{}`):
  `response.output_item.added`, `conversation.item.added`,
  `response.function_call_arguments.delta`/`.done`, `response.output_item.done`,
  `conversation.item.done`, `response.done`. After the client adds a `function_call_output`
  item and asks for a response, the reply quotes it: `[function NAME returned: OUTPUT]`.
- `#mcp:NAME` or `#mcp:NAME {"q": "refunds"}` — when a session tool
  `{"type": "mcp", "server_label": L, "server_url": …, "require_approval": …, "allowed_tools"?}`
  lists NAME. Its tools are listed when the tool is added by `session.update`:
  `conversation.item.added` (an `mcp_list_tools` item, id `mcpl_…`), `mcp_list_tools.in_progress`,
  `mcp_list_tools.completed`, `conversation.item.done` with the tools: the names of
  `allowed_tools` (a list, or `{"tool_names": [...]}`), else `echo` and `lookup`.
  `require_approval` is `"always"` (the default), `"never"`, or
  `{"always": {"tool_names": [...]}, "never": {"tool_names": [...]}}` (a name in neither: always).
  - Approval required: the response's output is one `mcp_approval_request` item (id `mcpr_…`,
    `server_label`, `name`, `arguments`), and it completes. The client answers with an
    `mcp_approval_response` item (`approval_request_id`, `approve`, `reason`?) — each one is
    kept in `ToolState.approval_responses` (`Simulator.approval_responses(session_id)`) — and a
    `response.create`. Approved: that response runs the call, as below. Denied: its reply says
    `[mcp L.NAME not run: denied (REASON)]` (`(no reason)` when none was given). The first
    response after the answer acts on it, whatever replies came while it waited (a response
    asked for before the answer is a plain text reply).
  - Approval not required, or given: the response runs the call first: an `mcp_call` item
    (output index 0; `response.output_item.added`, `conversation.item.added`,
    `response.mcp_call_arguments.delta`/`.done`, `response.mcp_call.in_progress`,
    `response.mcp_call.completed`, `response.output_item.done`, `conversation.item.done`) whose
    `output` is `[simulated] L.NAME(ARGUMENTS)`, then the text reply (output index 1), which
    quotes it: `[mcp L.NAME returned: OUTPUT]`.

A trigger fires once: when a tool item already follows the latest user message, the next
response is a text reply. A trigger naming a tool the response does not have, or with
`tool_choice` `"none"`, gets a text reply saying `[no tool NAME]`. Tool notes go after
`Reply N to: …` and before the conversation length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apps.simulator.wire import Rejected, dumps, new_event_id, new_id

if TYPE_CHECKING:
    from apps.simulator.session import SimResponse, SimSession

TRIGGER = re.compile(r"#(call|mcp):([A-Za-z0-9_.\-]+)")
DEFAULT_MCP_TOOLS = ("echo", "lookup")
_TOOL_ITEMS = frozenset({"function_call", "mcp_call", "mcp_approval_request"})


@dataclass(kw_only=True)
class ToolState:
    """A session's tool bookkeeping: MCP servers listed, approval responses received."""

    listed: dict[str, list[str]] = field(default_factory=dict)  # server_label → tool names
    approval_responses: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ToolPlan:
    """What a response does with a tool before (or instead of) its text."""

    kind: str  # "function_call", "mcp_approval_request" or "mcp_call"
    name: str
    arguments: str
    server_label: str = ""
    approval_request_id: str | None = None

    @property
    def output(self) -> str:
        return f"[simulated] {self.server_label}.{self.name}({self.arguments})"


def trigger(text: str) -> tuple[str, str, str] | None:
    """(kind, name, arguments JSON) of the first `#call:`/`#mcp:` in `text`, else None."""
    match = TRIGGER.search(text)
    if match is None:
        return None
    arguments = "{}"
    rest = text[match.end() :].lstrip()
    if rest.startswith("{"):
        try:
            value, _ = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            value = None
        if isinstance(value, dict):
            arguments = dumps(value)
    return match.group(1), match.group(2), arguments


def plan(
    session: SimSession, params: dict[str, Any], context: Sequence[dict[str, Any]]
) -> tuple[ToolPlan | None, str]:
    """What a new response does: a tool step (or None), and the note its text reply carries."""
    last_user = _last_user_index(context)
    after = context[last_user + 1 :] if last_user is not None else context
    answered = _unacted_answer(context)
    if answered is None and _pending_approval(after) is not None:
        return None, ""  # asked, not answered yet
    if answered is not None:
        request, answer = answered
        label, name = request.get("server_label", ""), request.get("name", "")
        if not answer.get("approve"):
            reason = answer.get("reason") or "no reason"
            return None, f"[mcp {label}.{name} not run: denied ({reason})]"
        step = ToolPlan(
            kind="mcp_call",
            name=name,
            arguments=request.get("arguments") or "{}",
            server_label=label,
            approval_request_id=request["id"],
        )
        return step, f"[mcp {label}.{name} returned: {step.output}]"
    notes = _outcomes(after)
    if last_user is None or any(item.get("type") in _TOOL_ITEMS for item in after):
        return None, notes
    from apps.simulator.session import _item_text  # the session module imports this one

    asked = trigger(_item_text(context[last_user]))
    if asked is None:
        return None, ""
    kind, name, arguments = asked
    tools = params.get("tools")
    if not isinstance(tools, list):
        tools = session.config.get("tools") or []
    choice = params.get("tool_choice", session.config.get("tool_choice"))
    if choice == "none":
        return None, f"[no tool {name}]"
    if kind == "call":
        if any(_is_function(tool, name) for tool in tools):
            return ToolPlan(kind="function_call", name=name, arguments=arguments), ""
        return None, f"[no tool {name}]"
    for tool in tools:
        if not (isinstance(tool, dict) and tool.get("type") == "mcp"):
            continue
        label = str(tool.get("server_label", ""))
        if name not in mcp_tool_names(tool):
            continue
        if needs_approval(tool, name):
            return ToolPlan(
                kind="mcp_approval_request", name=name, arguments=arguments, server_label=label
            ), ""
        step = ToolPlan(kind="mcp_call", name=name, arguments=arguments, server_label=label)
        return step, f"[mcp {label}.{name} returned: {step.output}]"
    return None, f"[no tool {name}]"


def mcp_tool_names(tool: dict[str, Any]) -> list[str]:
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    if isinstance(allowed, list) and all(isinstance(n, str) for n in allowed) and allowed:
        return list(allowed)
    return list(DEFAULT_MCP_TOOLS)


def needs_approval(tool: dict[str, Any], name: str) -> bool:
    rule = tool.get("require_approval", "always")
    if rule == "never":
        return False
    if isinstance(rule, dict):
        never = rule.get("never")
        if isinstance(never, dict) and name in (never.get("tool_names") or ()):
            return False
    return True


def check_item(session: SimSession, item: dict[str, Any]) -> None:
    """Refuse an `mcp_approval_response` item that answers no approval request of the session
    (before it is stored; its shape is `shape.check_item`'s)."""
    if item.get("type") != "mcp_approval_response":
        return
    request_id = item["approval_request_id"]
    index = session.item_index(request_id)
    if index is None or session.items[index].get("type") != "mcp_approval_request":
        raise Rejected(
            "invalid_value",
            f"No MCP approval request with id '{request_id}' in the conversation.",
            "item.approval_request_id",
        )


def item_added(session: SimSession, item: dict[str, Any]) -> None:
    """A client item was stored: approval responses are kept, in order, for tests."""
    if item.get("type") == "mcp_approval_response":
        session.tool_state.approval_responses.append(dict(item))


async def list_mcp_tools(session: SimSession) -> None:
    """List the tools of each MCP server the session has and has not listed yet."""
    tools = session.config.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not (isinstance(tool, dict) and tool.get("type") == "mcp"):
            continue
        label = str(tool.get("server_label", ""))
        names = mcp_tool_names(tool)
        if session.tool_state.listed.get(label) == names:
            continue
        session.tool_state.listed[label] = names
        item: dict[str, Any] = {
            "id": new_id("mcpl"),
            "object": "realtime.item",
            "type": "mcp_list_tools",
            "server_label": label,
            "tools": [],
        }
        previous = session.insert_item(item)
        await _send(session, "conversation.item.added", previous_item_id=previous, item=item)
        await _send(session, "mcp_list_tools.in_progress", item_id=item["id"])
        item["tools"] = [
            {
                "name": name,
                "description": f"Simulated tool {name} of {label}.",
                "input_schema": {"type": "object", "properties": {}},
                "annotations": None,
            }
            for name in names
        ]
        await _send(session, "mcp_list_tools.completed", item_id=item["id"])
        await _send(session, "conversation.item.done", previous_item_id=previous, item=item)


async def run(session: SimSession, response: SimResponse) -> dict[str, Any]:
    """Stream the response's tool item (output index 0); returns the finished item."""
    step = response.tool
    assert step is not None
    rid = response.id
    if step.kind == "function_call":
        item: dict[str, Any] = {
            "id": new_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": step.name,
            "call_id": new_id("call"),
            "arguments": "",
        }
    elif step.kind == "mcp_approval_request":
        item = {
            "id": new_id("mcpr"),
            "object": "realtime.item",
            "type": "mcp_approval_request",
            "server_label": step.server_label,
            "name": step.name,
            "arguments": step.arguments,
        }
    else:
        item = {
            "id": new_id("mcp"),
            "object": "realtime.item",
            "type": "mcp_call",
            "server_label": step.server_label,
            "name": step.name,
            "arguments": "",
            "approval_request_id": step.approval_request_id,
            "output": None,
            "error": None,
        }
    where = {"response_id": rid, "item_id": item["id"], "output_index": 0}
    await _send(session, "response.output_item.added", response_id=rid, output_index=0, item=item)
    previous: str | None = None
    if response.in_conversation:
        previous = session.insert_item(item)
        await _send(session, "conversation.item.added", previous_item_id=previous, item=item)
    if step.kind == "function_call":
        call = {"call_id": item["call_id"]}
        await _send(session, "response.function_call_arguments.delta", **where, **call,
                    delta=step.arguments)
        await _send(session, "response.function_call_arguments.done", **where, **call,
                    name=step.name, arguments=step.arguments)
        item["arguments"] = step.arguments
        item["status"] = "completed"
    elif step.kind == "mcp_call":
        await _send(session, "response.mcp_call_arguments.delta", **where, delta=step.arguments)
        await _send(session, "response.mcp_call_arguments.done", **where, arguments=step.arguments)
        item["arguments"] = step.arguments
        at = {"item_id": item["id"], "output_index": 0}
        await _send(session, "response.mcp_call.in_progress", **at)
        item["output"] = step.output
        await _send(session, "response.mcp_call.completed", **at)
    await _send(session, "response.output_item.done", response_id=rid, output_index=0, item=item)
    if response.in_conversation:
        await _send(session, "conversation.item.done", previous_item_id=previous, item=item)
    return item


# --- reading the conversation -----------------------------------------------------------------


def _last_user_index(context: Sequence[dict[str, Any]]) -> int | None:
    for index in range(len(context) - 1, -1, -1):
        item = context[index]
        if item.get("type") == "message" and item.get("role") == "user":
            return index
    return None


def _pending_approval(items: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest approval request not yet acted on (by its call, or by a reply)."""
    for item in reversed(items):
        if item.get("type") == "mcp_call" and item.get("approval_request_id"):
            return None
        if item.get("type") == "message" and item.get("role") == "assistant":
            return None
        if item.get("type") == "mcp_approval_request":
            return item
    return None


def _unacted_answer(
    context: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The latest approval response the model has not acted on (no MCP call and no reply of
    its own after it), with the request it answers. Replies made while the request waited (an
    operator's nudge, the caller's own turn) come before the answer, so they do not count."""
    for index in range(len(context) - 1, -1, -1):
        item = context[index]
        kind = item.get("type")
        if kind == "mcp_call" or (kind == "message" and item.get("role") == "assistant"):
            return None
        if kind == "mcp_approval_response":
            wanted = item.get("approval_request_id")
            for earlier in context[:index]:
                if earlier.get("type") == "mcp_approval_request" and earlier.get("id") == wanted:
                    return earlier, item
            return None
    return None


def _outcomes(items: Sequence[dict[str, Any]]) -> str:
    """Notes quoting the function outputs among `items`, by their call's name."""
    names = {i.get("call_id"): i.get("name") for i in items if i.get("type") == "function_call"}
    notes = []
    for item in items:
        if item.get("type") == "function_call_output":
            name = names.get(item.get("call_id"), "?")
            notes.append(f"[function {name} returned: {item.get('output', '')}]")
    return " ".join(notes)


def _is_function(tool: object, name: str) -> bool:
    return isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name") == name


async def _send(session: SimSession, kind: str, **fields: Any) -> None:
    await session.send({"type": kind, "event_id": new_event_id(), **fields})
