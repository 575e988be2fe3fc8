"""Structured output and tool calling with the official openai client against a live
`hangar serve` on the default model: every JSON answer parses and validates against
its schema (Python `jsonschema`), regex and choice constraints hold, a tool-call
round trip (call -> tool result -> final answer) works, streamed and not, and an
unsupported schema feature is a 400 that names it."""

import json
import re

import jsonschema
import openai
import pytest

from conftest import MODEL_NAME


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", timeout=300, max_retries=0)


def obj(props, required=None, **extra):
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


SHORT = {"type": "string", "maxLength": 24}
# Small models can run on forever inside a number or a string: bound them.
INT = {"type": "integer", "minimum": 0, "maximum": 100000}

SCHEMAS = [
    ("person", "Describe a fictional person.", obj({"name": SHORT, "age": INT})),
    ("bool", "Is the sky blue? Answer as JSON.", obj({"answer": {"type": "boolean"}})),
    ("enum", "Pick a colour.", obj({"colour": {"enum": ["red", "green", "blue"]}})),
    ("number", "Give the price of a coffee.", obj({"price": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}})),
    ("array_of_str", "List three fruits.", obj({"fruits": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3}})),
    ("array_of_int", "List some small numbers.", obj({"numbers": {"type": "array", "items": INT, "minItems": 2, "maxItems": 4}})),
    ("nested", "Describe a city and its country.",
     obj({"city": SHORT, "country": obj({"name": SHORT, "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]}})})),
    ("array_of_obj", "List two books with their year.",
     obj({"books": {"type": "array", "minItems": 1, "maxItems": 2, "items": obj({"title": SHORT, "year": INT})}})),
    ("optional", "Describe a pet.", obj({"name": SHORT, "species": SHORT, "age": INT}, required=["name", "species"])),
    ("pattern_date", "Give a date.", obj({"date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}})),
    ("pattern_code", "Give a product code.", obj({"code": {"type": "string", "pattern": r"^[A-Z]{3}-\d{3}$"}})),
    ("const", "Say the version.", obj({"version": {"const": "1.0"}, "ok": {"type": "boolean"}})),
    ("null_union", "Maybe give a nickname.", obj({"nickname": {"type": ["string", "null"], "maxLength": 20}})),
    ("anyof", "Give an id.", obj({"id": {"anyOf": [INT, {"type": "string", "pattern": r"^[a-z]{4}$"}]}})),
    ("string_len", "Give a three-letter word.", obj({"word": {"type": "string", "minLength": 3, "maxLength": 3}})),
    ("int_range", "Rate a film from 1 to 5.", obj({"rating": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("enum_array", "Which days are weekend days?",
     obj({"days": {"type": "array", "items": {"enum": ["Saturday", "Sunday", "Monday"]}, "minItems": 1, "maxItems": 2}})),
    ("deep", "Describe an order.",
     obj({"order": obj({"id": INT, "items": {"type": "array", "maxItems": 2, "items": obj({"sku": SHORT, "qty": INT})},
                        "paid": {"type": "boolean"}})})),
    ("top_array", "List two animals as a JSON array.", {"type": "array", "items": SHORT, "minItems": 2, "maxItems": 2}),
    ("email_like", "Give an email address.", obj({"email": {"type": "string", "pattern": r"^[a-z]{2,8}@[a-z]{2,8}\.com$"}})),
    ("defs_ref", "Describe two points.",
     {"type": "object", "$defs": {"pt": obj({"x": INT, "y": INT})},
      "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}}, "required": ["a", "b"],
      "additionalProperties": False}),
    ("mixed", "Describe a laptop.",
     obj({"brand": SHORT, "ram_gb": {"enum": [8, 16, 32]}, "ssd": {"type": "boolean"},
          "price": {"type": "number", "minimum": 100, "maximum": 5000}, "ports": {"type": "array", "items": SHORT, "maxItems": 3}})),
]


def chat(client, prompt, **kw):
    return client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=kw.pop("max_tokens", 200), **kw)


@pytest.mark.parametrize("name,prompt,schema", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_json_schema_answers_parse_and_validate(client, name, prompt, schema):
    r = chat(client, prompt, response_format={"type": "json_schema",
                                              "json_schema": {"name": name, "schema": schema, "strict": True}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    value = json.loads(c.message.content)
    jsonschema.validate(value, schema)


def test_json_object_and_completions_endpoint(client):
    r = chat(client, 'Reply with a JSON object like {"city": "Rome", "temp": 20} for Paris.',
             response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = obj({"city": SHORT, "sunny": {"type": "boolean"}})
    r = client.completions.create(model=MODEL_NAME, prompt="The weather in Paris as JSON:", max_tokens=100,
                                  temperature=0.7, seed=3,
                                  extra_body={"response_format": {"type": "json_schema",
                                                                  "json_schema": {"name": "w", "schema": schema}}})
    jsonschema.validate(json.loads(r.choices[0].text), schema)


def test_sampled_answers_validate_too(client):
    schema = obj({"name": SHORT, "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}})
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Make a record."}],
                                       temperature=1.0, seed=11, n=4, max_tokens=120,
                                       response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert len(r.choices) == 4
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), schema)


def test_streamed_json_schema(client):
    schema = obj({"name": SHORT, "age": INT})
    stream = chat(client, "Describe a person.", stream=True,
                  response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_max_tokens_cut_says_length(client):
    schema = obj({"story": {"type": "string"}})
    r = chat(client, "Tell a long story as JSON.", max_tokens=8,
             response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert r.choices[0].finish_reason == "length"


def test_guided_regex_and_choice(client):
    r = chat(client, "Give a phone number.", extra_body={"guided_regex": r"\d{3}-\d{4}"})
    assert re.fullmatch(r"\d{3}-\d{4}", r.choices[0].message.content)
    r = chat(client, "Is this review positive or negative? 'I loved it.'",
             extra_body={"guided_choice": ["positive", "negative"]})
    assert r.choices[0].message.content in ("positive", "negative")
    stream = chat(client, "Pick a number word.", stream=True, extra_body={"guided_choice": ["one", "two", "three"]})
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text in ("one", "two", "three")


def test_guided_grammar_gbnf_and_lark(client):
    gbnf = 'root ::= "The answer is " answer "."\nanswer ::= "yes" | "no"'
    r = chat(client, "Is water wet?", extra_body={"guided_grammar": gbnf})
    assert r.choices[0].message.content in ("The answer is yes.", "The answer is no.")
    lark = 'start: "Colour: " COLOUR\nCOLOUR: "red" | "blue"'
    r = chat(client, "Name a colour.", extra_body={"guided_grammar": lark})
    assert r.choices[0].message.content in ("Colour: red", "Colour: blue")


def test_unsupported_schema_feature_is_a_400_naming_it(client):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "unevaluatedProperties": False}
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "x", response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": schema}})
    assert "unevaluatedProperties" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "x", response_format={"type": "xml"})
    assert "xml" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        chat(client, "x", extra_body={"guided_regex": "a", "guided_choice": ["b"]})


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time in a timezone",
                 "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}},
                                "required": ["tz"]}},
}


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER, TIME],
                                       tool_choice="required", temperature=0, max_tokens=120,
                                       parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    params = WEATHER if call.function.name == "get_weather" else TIME
    jsonschema.validate(args, params["function"]["parameters"])

    messages.append(c.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": json.dumps({"city": "Paris", "temperature": 18, "unit": "celsius"})})
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER, TIME],
                                       tool_choice="none", temperature=0, max_tokens=60)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length")
    assert c.message.tool_calls is None
    assert c.message.content


def test_named_tool_choice_constrains_arguments(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Oslo, in fahrenheit."}],
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=120)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls and all(t.function.name == "get_weather" for t in calls)
    for t in calls:
        jsonschema.validate(json.loads(t.function.arguments), WEATHER["function"]["parameters"])


def test_streamed_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[TIME], tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=100, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            if tc.function:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(calls) == 1 and calls[0]["name"] == "get_time" and calls[0]["id"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), TIME["function"]["parameters"])


def test_auto_tool_choice_answers_or_calls(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}],
                                       tools=[WEATHER], temperature=0, max_tokens=40)
    c = r.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
    else:
        assert c.message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                       tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
