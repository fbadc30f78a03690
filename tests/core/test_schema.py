"""A request is refused in Vertex's words, naming the field; camelCase and snake_case both work."""

from __future__ import annotations

import pytest

from batchpredict.errors import InvalidArgument
from batchpredict.schema import parse_request

TEXT = [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"contents": [{"role": "tester", "parts": [{"text": "x"}]}]},
         "Please use a valid role: user, model."),
        ({"contents": TEXT, "generationConfig": {"temperature": 3}},
         "Unable to submit request because it has a temperature value of 3 but the supported "
         "range is from 0 (inclusive) to 2.0001 (exclusive). Update the value and try again."),
        ({"contents": TEXT, "generation_config": {"top_p": 1.5}},
         "Unable to submit request because it has a topP value of 1.5 but the supported "
         "range is from 0 (inclusive) to 1.0001 (exclusive). Update the value and try again."),
        ({"contents": TEXT, "generationConfig": {"maxOutputTokens": 0}},
         "Unable to submit request because it has a maxOutputTokens value of 0 but the supported "
         "range is from 1 (inclusive) to 65537 (exclusive). Update the value and try again."),
        ({"contents": [{"parts": [{"txt": "a"}]}]},
         'Invalid JSON payload received. Unknown name "txt" at \'contents[0].parts[0]\': '
         "Cannot find field."),
        ({"contents": TEXT, "generationConfig": {"maxOutputTokens": "lots"}},
         "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), \"lots\": "
         "expected int."),
        ({"contents": [{"parts": [{"fileData": {"mimeType": "image/png"}}]}]},
         "Invalid JSON payload received. Missing required field "
         "'contents[0].parts[0].file_data.file_uri'."),
        ({"contents": []},
         "Unable to submit request because it has an empty contents field. "
         "Add at least one content with a text part and try again."),
        ({"contents": [{"role": "user", "parts": [{"text": ""}]}]},
         "Unable to submit request because it has an empty text parameter. "
         "Add a value to the parameter and try again."),
        ([{"contents": TEXT}],
         "Invalid JSON payload received. 'request' must be an object, got list."),
    ],
)
def test_bad_requests_are_refused_in_vertex_words(request_, message) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_request(request_)
    assert err.value.message == message


def test_snake_and_camel_case_mean_the_same_request() -> None:
    schema = {"my_field": {"type": "STRING"}}
    camel = parse_request({"contents": TEXT, "systemInstruction": {"parts": [{"text": "s"}]},
                           "generationConfig": {"maxOutputTokens": 5, "stopSequences": ["x"],
                                                "responseSchema": schema}})
    snake = parse_request({"contents": TEXT, "system_instruction": {"parts": [{"text": "s"}]},
                           "generation_config": {"max_output_tokens": 5, "stop_sequences": ["x"],
                                                 "response_schema": schema}})
    assert camel == snake
    # free-form objects keep their keys
    assert camel.to_json()["generationConfig"]["responseSchema"] == {"my_field": {"type": "STRING"}}


def test_system_instruction_may_carry_any_role() -> None:
    req = parse_request({"contents": TEXT,
                         "systemInstruction": {"role": "system", "parts": [{"text": "be brief"}]}})
    assert req.system_instruction is not None and req.system_instruction.parts[0].text == "be brief"
