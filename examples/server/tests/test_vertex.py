"""Google's `google-genai` SDK (pinned in tools/requirements.txt) in Vertex mode against `vgen-server`'s
long-running prediction door: `generate_videos`, polled with `operations.get`, the video saved and checked by
ffprobe; an image-to-video request; and the errors the SDK raises. The server runs `testcard` and the core
fixtures' tiny Wan made a TI2V model (`tiny-ti2v`), as in `test_openai.py`.

Run by `make test-server`; `VGEN_SERVER` names the binary (default: target/debug/vgen-server).
"""

import time

import pytest
from google import genai
from google.genai import errors, types

from server_process import running
from test_openai import check_mp4, red_square_png

TOKEN = "vertex-client-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("vertex"), {TOKEN: "vertex"}, with_ti2v=True) as url:
        yield url


def client_for(server: str, key: str = TOKEN) -> genai.Client:
    return genai.Client(vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=server + "/"))


def finished(client: genai.Client, operation):
    deadline = time.time() + 120
    while not operation.done:
        assert time.time() < deadline, "the operation finishes"
        time.sleep(0.1)
        operation = client.operations.get(operation)
    return operation


def test_generate_videos_then_poll_then_save(server, tmp_path):
    client = client_for(server)
    operation = client.models.generate_videos(
        model="testcard",
        source=types.GenerateVideosSource(prompt="a red circle moving right"),
        config=types.GenerateVideosConfig(duration_seconds=1, resolution="144p", aspect_ratio="16:9", seed=4,
                                          number_of_videos=1),
    )
    assert operation.name.endswith("/operations/job-1") or "/operations/job-" in operation.name
    operation = finished(client, operation)
    assert operation.error is None, operation.error
    video = operation.response.generated_videos[0].video
    assert video.mime_type == "video/mp4"
    video.save(str(tmp_path / "clip.mp4"))
    # 1 s at 8 fps is 8 frames; the test card makes 9 (1 + 4k). 144p at 16:9 is 256x144.
    check_mp4((tmp_path / "clip.mp4").read_bytes(), tmp_path / "clip.mp4", frames=9, size=(256, 144))


def test_an_image_makes_it_image_to_video(server, tmp_path):
    client = client_for(server)
    image = types.Image(image_bytes=red_square_png(), mime_type="image/png")
    operation = client.models.generate_videos(
        model="tiny-ti2v", source=types.GenerateVideosSource(prompt="a red square moving right", image=image))
    operation = finished(client, operation)
    assert operation.error is None, operation.error
    data = operation.response.generated_videos[0].video.video_bytes
    check_mp4(data, tmp_path / "i2v.mp4", frames=9, size=(32, 32))
    # A last frame on a model without first–last frame is refused, naming it.
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_videos(
            model="tiny-ti2v", source=types.GenerateVideosSource(prompt="x", image=image),
            config=types.GenerateVideosConfig(last_frame=image))
    assert info.value.code == 400 and "last" in info.value.message.lower(), info.value


def test_errors_are_the_sdks_with_googles_envelope(server):
    client = client_for(server)
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_videos(model="testcard", source=types.GenerateVideosSource(prompt="x"),
                                      config=types.GenerateVideosConfig(resolution="huge"))
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT" and "resolution" in info.value.message
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_videos(model="veo-3", source=types.GenerateVideosSource(prompt="x"))
    assert info.value.code == 400 and "testcard" in info.value.message
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_videos(model="testcard", source=types.GenerateVideosSource(prompt="x"),
                                      config=types.GenerateVideosConfig(number_of_videos=2))
    assert info.value.code == 400 and "sampleCount" in info.value.message
    wrong = client_for(server, "wrong-key")  # held: a client closes itself when collected
    with pytest.raises(errors.ClientError) as info:
        wrong.models.generate_videos(model="testcard", source=types.GenerateVideosSource(prompt="x"))
    assert info.value.code == 401 and info.value.status == "UNAUTHENTICATED"
    with pytest.raises(errors.ClientError) as info:
        client.operations.get(types.GenerateVideosOperation(name="publishers/google/models/testcard/operations/job-999"))
    assert info.value.code == 404
