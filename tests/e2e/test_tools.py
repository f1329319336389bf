"""Tool calling through the official `openai` client: the requests agent frameworks send.

The default model's GGUF has no chat template of its own, so these run the generic format
(docs/api.md, "Tool calling"): the tools are described in a system turn, and with
`tool_choice` `required` or a named function a grammar holds the answer to the call
envelope and each function's JSON schema. Greedy decoding keeps every answer reproducible.
"""

import json

import jsonschema
import openai
import pytest

from conftest import MODEL_ID

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city.",
        "parameters": WEATHER}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The current time in a timezone.",
        "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def create(client, messages=ASK, **kwargs):
    kwargs.setdefault("max_tokens", 96)
    return client.chat.completions.create(
        model=MODEL_ID, messages=messages, tools=TOOLS, temperature=0, **kwargs)


def check_calls(calls):
    """Every call has an OpenAI id, a declared function and arguments that follow its schema."""
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_") and len(call.id) == 29, call.id
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_named_function_is_called_with_valid_arguments(client):
    response = create(client, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                      parallel_tool_calls=False)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    check_calls(choice.message.tool_calls)
    assert {c.function.name for c in choice.message.tool_calls} == {"get_weather"}
    assert response.usage.completion_tokens > 0


def test_two_turn_agent_loop(client):
    """Call, run the tool, send its result back: the model answers in prose from it."""
    first = create(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert first.finish_reason == "tool_calls"
    calls = first.message.tool_calls
    assert len(calls) == 1, "parallel_tool_calls=false allows one call"
    check_calls(calls)
    results = {"get_weather": {"temperature": 21, "sky": "sunny"}, "get_time": {"time": "14:05"}}
    history = ASK + [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id,
         "content": json.dumps(results[calls[0].function.name])},
    ]
    second = create(client, messages=history, tool_choice="none", max_tokens=32)
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None
    assert answer.message.content and answer.message.content.strip()
    # The history (call and result) reached the prompt.
    alone = create(client, tool_choice="none", max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 20


def test_several_calls_in_one_answer(client):
    """parallel_tool_calls (the default): one answer may hold several calls, each valid."""
    ask = [{"role": "user", "content":
            "Call get_weather for Paris, then get_weather for London, then get_time for Tokyo."}]
    choice = create(client, messages=ask, tool_choice="required", max_tokens=400).choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    check_calls(calls)
    # The grammar closes the list after 8 calls, however often a small model repeats itself.
    assert 2 <= len(calls) <= 8, [c.function for c in calls]
    assert len({c.id for c in calls}) == len(calls), "ids are unique"


def test_a_streamed_call_matches_the_plain_one(client):
    """OpenAI's stream shape: index, id and name first, then argument fragments."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    plain = create(client, tool_choice=named, parallel_tool_calls=False).choices[0].message.tool_calls
    chunks = list(create(client, tool_choice=named, parallel_tool_calls=False, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = {}
    fragments = 0
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id:
                assert delta.index not in calls, "one start per call"
                assert delta.function.name and delta.function.arguments == ""
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "args": ""}
            else:
                calls[delta.index]["args"] += delta.function.arguments
                fragments += 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)
    assert [(c["name"], c["args"]) for c in calls.values()] == \
        [(c.function.name, c.function.arguments) for c in plain]
    assert fragments > 1, "arguments are streamed as they are written"


def test_auto_lets_the_model_answer_in_prose(client):
    response = create(client, messages=[{"role": "user", "content": "Say hello to Anna."}],
                      max_tokens=16, tool_choice="auto")
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and choice.message.tool_calls is None


BAD = [
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": "a string"}}]),
     "tools[0].function.parameters", "JSON schema object"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]),
     "tools[0].function.parameters", "type `object`"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}),
     "tool_choice", "`launch`, which is not among the tools"),
    (dict(tool_choice="required"), "tool_choice", "declares no tools"),
    (dict(tools=[{"type": "function", "function": {"name": "no spaces"}}]),
     "tools[0].function.name", "letters, digits"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
     "response_format", "cannot be combined"),
    (dict(messages=ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "21"}]),
     "messages", "`call_x` answers no call"),
    (dict(messages=ASK + [{"role": "tool", "content": "21"}]),
     "messages", "needs the tool_call_id"),
]


@pytest.mark.parametrize("kwargs, param, says", BAD)
def test_bad_tool_input_is_400_naming_it(client, kwargs, param, says):
    kwargs = {"messages": ASK, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, max_tokens=4, **kwargs)
    error = caught.value.body
    assert error["param"] == param
    assert says in error["message"], error["message"]
    assert error["type"] == "invalid_request_error"
