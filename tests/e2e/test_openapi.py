"""The node's OpenAPI document and a property-based fuzz run against it.

`GET /openapi.json` is derived from the request and response types (utoipa). schemathesis
(PyPI) reads it, generates requests from the schemas (valid ones and near-misses), sends them
to a running node for a bounded time, and checks every answer: no 5xx, a content type and a
status the document declares, and a body that follows the declared schema. Errors are
declared as OpenAI's error object, so every error body is checked to be in that shape. The
node runs with a small context (128 tokens per slot) so that generations stay short.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import API_KEY, MODEL_ID, Server, http_get

FUZZ_SECONDS = 90


@pytest.fixture(scope="module")
def small():
    srv = Server(extra_args=("--embeddings", "--parallel", "4", "--ctx-size", "512",
                             "--queue", "64"))
    srv.wait_ready()
    yield srv
    srv.stop()


def test_the_document_is_served_and_describes_the_api(small):
    status, body = http_get(small.base + "/openapi.json")
    assert status == 200
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
            "/v1/models/{id}", "/health"} <= set(paths)
    chat = paths["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    fields = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in json.dumps(fields) and "tool_choice" in json.dumps(fields)


def test_wrong_methods_get_an_openai_error(small):
    import urllib.request
    import urllib.error

    request = urllib.request.Request(small.base + "/v1/chat/completions", method="GET",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and "GET" in error["message"]


def served_model_only(node):
    """A schema with `model` (every request's) held to the model the node serves: with random
    names nearly every request would stop at the 404 for an unknown model."""
    if isinstance(node, dict):
        return {key: ({"type": "string", "enum": [MODEL_ID]} if key == "model" and isinstance(value, dict)
                      else served_model_only(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [served_model_only(item) for item in node]
    return node


def test_fuzzing_finds_no_server_error_and_no_answer_off_the_schema(small, tmp_path):
    _, body = http_get(small.base + "/openapi.json")
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(served_model_only(json.loads(body))))
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis), "run", str(document), "--url", small.base,
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--header", f"Authorization: Bearer {API_KEY}",
        "--max-time", str(FUZZ_SECONDS),
        # One worker: CPython 3.11's ast.parse can fail spuriously when threads parse at
        # once ("AST constructor recursion depth mismatch", python/cpython#106905), and
        # Hypothesis parses lambdas to describe strategies.
        "--workers", "1",
        "--suppress-health-check", "all",
        "--request-timeout", "180",
        "--seed", "16",
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_SECONDS + 400,
                         cwd=tmp_path)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    # No crash either: the node still serves.
    status, _ = http_get(small.base + "/health")
    assert status == 200, report
