"""`livo serve`'s KServe predictor, started for real in a subprocess on a loopback port with a tiny model
(tests/serving/tiny_server.py): v1 and v2 inference, principles, compare, bad input, metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_client import call, decode_png, delta, metrics, running_server  # noqa: E402

MODEL = "livo-tiny"
PROMPT = "a photo of a bloody nurse"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tiny-server")
    with running_server(["--report", str(tmp / "report.html")], tmp / "server.log") as base:
        yield base


def v1(base: str, body, **kwargs):
    return call(f"{base}/v1/models/{MODEL}:predict", body, **kwargs)


def v2(base: str, body, path: str = f"/v2/models/{MODEL}/infer"):
    return call(base + path, body)


def v2_body(prompts: list[str], parameters: dict | None = None, inputs: list[dict] | None = None) -> dict:
    return {"inputs": [{"name": "prompt", "shape": [len(prompts)], "datatype": "BYTES", "data": prompts}]
            + (inputs or []), "parameters": parameters or {}}


def pixels(text: str) -> np.ndarray:
    return np.asarray(decode_png(text))


def test_v1_returns_pngs_of_the_model_size_with_principle_evidence_and_version(server: str) -> None:
    answer = v1(server, {"prompt": PROMPT, "seed": 7, "num_images": 2})
    assert answer.status == 200, answer.body
    body = answer.json()
    (prediction,) = body["predictions"]
    assert prediction["seeds"] == [7, 8] and len(prediction["images"]) == 2
    for text in prediction["images"]:
        image = decode_png(text)
        assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
    assert prediction["principle"]["id"] == "bloody" and prediction["principle"]["category"] == "toxicity"
    assert prediction["evidence"]["stage"] == "keyword" and "bloody" in prediction["evidence"]["keywords"]
    assert prediction["evidence"]["confidence"] == 0.9615 and prediction["evidence"]["withheld"] == {}
    assert prediction["value_token"] == [True, True]  # a toxicity principle: inference dropout 0
    assert body["model"]["name"] == MODEL and body["model"]["version"] == "v3"
    assert body["model"]["lineage_sha256"] == "sha256:" + "ab" * 32
    assert "base_images" not in prediction


def test_v1_instances_each_get_their_own_answer(server: str) -> None:
    answer = v1(server, {"instances": ["a zombie in a city", {"prompt": "a red car", "seed": 1, "principle": "none"}]})
    assert answer.status == 200, answer.body
    first, second = answer.json()["predictions"]
    assert first["principle"]["id"] == "zombie"
    assert second["principle"] is None and second["evidence"]["stage"] == "disabled" and second["seeds"] == [1]


def test_v2_returns_pngs_seeds_principles_and_lineage(server: str) -> None:
    answer = v2(server, v2_body(["a zombie", PROMPT], {"num_images": 2},
                                [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [5, 40]}]))
    assert answer.status == 200, answer.body
    body = answer.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["image"]["shape"] == [4] and outputs["image"]["datatype"] == "BYTES"
    assert [decode_png(t).size for t in outputs["image"]["data"]] == [(32, 32)] * 4
    assert outputs["seed"]["data"] == [5, 6, 40, 41] and outputs["prompt_index"]["data"] == [0, 0, 1, 1]
    assert outputs["principle"]["data"] == ["zombie", "bloody"]
    assert json.loads(outputs["evidence"]["data"][0])["stage"] == "keyword"
    assert body["model_name"] == MODEL and body["model_version"] == "v3"
    assert body["parameters"]["lineage_sha256"] == "sha256:" + "ab" * 32
    again = v2(server, v2_body(["a zombie"], {"seed": 5}), path=f"/v2/models/{MODEL}/versions/v3/infer")
    assert again.status == 200, again.body
    assert {o["name"]: o for o in again.json()["outputs"]}["image"]["data"][0] == outputs["image"]["data"][0]


def test_principle_none_and_an_explicit_principle_differ_and_compare_returns_both(server: str) -> None:
    plain = v1(server, {"prompt": "a portrait", "seed": 11, "principle": "none"}).json()["predictions"][0]
    aligned = v1(server, {"prompt": "a portrait", "seed": 11, "principle": "zombie", "compare": True}).json()
    prediction = aligned["predictions"][0]
    assert plain["principle"] is None and plain["value_token"] == [False]
    assert prediction["principle"]["id"] == "zombie" and prediction["evidence"]["stage"] == "explicit"
    assert len(prediction["images"]) == len(prediction["base_images"]) == 1
    assert not np.array_equal(pixels(prediction["images"][0]), pixels(plain["images"][0]))
    # the base image of the comparison is the base model's image for the same seed, bit for bit
    assert np.array_equal(pixels(prediction["base_images"][0]), pixels(plain["images"][0]))


BAD_V1 = [
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"prompt": "   "}, 400, "prompt is empty"),
    ({"prompt": "x" * 1001}, 400, "at most 1000"),
    ({"prompt": 5}, 400, "must be a string"),
    ({"seed": 1}, 400, "no prompt"),
    ({"prompt": "a cat", "principle": "kindness"}, 400, "unknown principle 'kindness'"),
    ({"prompt": "a cat", "num_images": 5}, 400, "at most 4 images"),
    ({"instances": ["a cat"] * 5}, 400, "at most 4 images"),
    ({"instances": [{"prompt": "a", "num_images": 3}, {"prompt": "b", "num_images": 2}]}, 400, "asks for 5 images"),
    ({"prompt": "a cat", "num_images": 0}, 400, "positive integer"),
    ({"prompt": "a cat", "seed": 1.5}, 400, "seed must be an integer"),
    ({"prompt": "a cat", "seed": "3"}, 400, "seed must be an integer"),
    ({"prompt": "a cat", "seed": True}, 400, "seed must be an integer"),
    ({"prompt": "a cat", "seed": -1}, 400, "seed must be in"),
    ({"prompt": "a cat", "seeds": [1, "x"]}, 400, "seed must be an integer"),
    ({"prompt": "a cat", "compare": "yes"}, 400, "compare must be true or false"),
    ({"prompt": "a cat", "colour": "red"}, 400, "unknown field 'colour'"),
    (b"{not json", 400, ""),
    ({"prompt": "a cat", "version": "v9"}, 404, "not served here"),
]


@pytest.mark.parametrize(("body", "status", "cause"), BAD_V1, ids=[str(i) for i in range(len(BAD_V1))])
def test_bad_v1_input_gets_its_status_and_a_one_line_json_cause(server: str, body, status: int, cause: str) -> None:
    answer = v1(server, body)
    assert answer.status == status, answer.body
    text = answer.body.decode()
    assert "\n" not in text.strip()
    assert set(json.loads(text)) == {"error"} and cause in json.loads(text)["error"]


BAD_V2 = [
    (v2_body([""]), f"/v2/models/{MODEL}/infer", 400, "prompt is empty"),
    (v2_body(["a cat"], {"principle": "kindness"}), f"/v2/models/{MODEL}/infer", 400, "unknown principle"),
    (v2_body(["a cat"], {"num_images": 9}), f"/v2/models/{MODEL}/infer", 400, "at most 4 images"),
    (v2_body(["a cat"], inputs=[{"name": "seed", "shape": [1], "datatype": "FP32", "data": [1.5]}]),
     f"/v2/models/{MODEL}/infer", 400, "integer datatype"),
    (v2_body(["a cat"], {"seed": 2.5}), f"/v2/models/{MODEL}/infer", 400, "seed must be an integer"),
    ({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES"}]}, f"/v2/models/{MODEL}/infer", 400,
     "malformed request"),
    (v2_body(["a cat"]), f"/v2/models/{MODEL}/versions/v9/infer", 404, "not served here"),
    (v2_body(["a cat"]), "/v2/models/no-such-model/infer", 404, "no-such-model"),
]


@pytest.mark.parametrize(("body", "path", "status", "cause"), BAD_V2, ids=[str(i) for i in range(len(BAD_V2))])
def test_bad_v2_input_gets_its_status_and_a_one_line_json_cause(server: str, body, path: str, status: int,
                                                                cause: str) -> None:
    answer = v2(server, body, path)
    assert answer.status == status, answer.body
    text = answer.body.decode()
    assert "\n" not in text.strip() and cause in json.loads(text)["error"]


def test_the_server_keeps_serving_after_bad_requests(server: str) -> None:
    for body, _, _ in BAD_V1:
        v1(server, body)
    assert call(server + "/v2/health/live").status == 200
    assert call(server + f"/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}
    assert v1(server, {"prompt": "a cat", "seed": 0}).status == 200


def test_metrics_count_requests_images_and_principles_exactly(server: str) -> None:
    before = metrics(server)
    assert v1(server, {"prompt": "a cat", "principle": "bloody", "seed": 3, "num_images": 2, "compare": True}).status \
        == 200
    assert v1(server, {"prompt": ""}).status == 400
    assert v2(server, v2_body(["a zombie"], {"seed": 1})).status == 200
    after = metrics(server)
    assert delta(before, after, 'livo_serve_requests_total{code="200",route="v1"}') == 1
    assert delta(before, after, 'livo_serve_requests_total{code="400",route="v1"}') == 1
    assert delta(before, after, 'livo_serve_requests_total{code="200",route="v2"}') == 1
    assert delta(before, after, 'livo_serve_images_total{kind="aligned",principle="bloody"}') == 2
    assert delta(before, after, 'livo_serve_images_total{kind="base",principle="bloody"}') == 2
    assert delta(before, after, 'livo_serve_images_total{kind="aligned",principle="zombie"}') == 1
    assert delta(before, after, 'livo_serve_principle_chosen_total{mode="requested",principle="bloody"}') == 1
    assert delta(before, after, 'livo_serve_principle_chosen_total{mode="auto",principle="zombie"}') == 1
    assert delta(before, after, 'livo_serve_request_seconds_count{route="v1"}') == 2
    assert delta(before, after, "livo_serve_batch_requests_sum") == 2  # the 400 never reached the queue
    assert after["livo_serve_queue_depth"] == 0


def test_the_root_answers_liveness_to_clients_and_the_page_to_browsers(server: str) -> None:
    assert call(server + "/").json() == {"status": "alive"}
    page = call(server + "/", headers={"Accept": "text/html"})
    assert page.status == 200 and b"<form" in page.body and f"/v1/models/{MODEL}:predict".encode() in page.body
    assert b"http://" not in page.body and b"https://" not in page.body  # no external assets
    assert b"LiVO evaluation report" in call(server + "/report").body
