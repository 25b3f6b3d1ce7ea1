"""The official `openai` SDK (pinned in tools/requirements.txt) against `vgen-server`'s OpenAI Videos API door:
`create_and_poll` with and without `input_reference`, `retrieve`, `list` with pagination, `download_content` of
each variant, `remix`, `delete`, and the errors the SDK maps to its exceptions. The server runs the built-in
`testcard` model and the core fixtures' tiny Wan made a TI2V model (`tiny-ti2v`), which animates an image.

Run by `make test-server`; `VGEN_SERVER` names the binary (default: target/debug/vgen-server).
"""

import base64
import io
import json
import pathlib
import shutil
import struct
import subprocess
import zlib

import openai
import pytest

from server_process import running

# The SDK marks its Videos API deprecated since OpenAI's own shut down; serving it is this door's purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

TOKEN = "openai-client-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("openai"), {TOKEN: "openai", TOKEN + "-other": "other"}, with_ti2v=True) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=TOKEN, max_retries=0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def red_square_png(width: int = 48, height: int = 40) -> bytes:
    """A PNG of a red square on black, written by hand (no imaging library needed)."""
    rows = b""
    for y in range(height):
        row = bytearray(b"\x00")  # filter: none
        for x in range(width):
            row += bytes([230, 40, 40]) if 8 <= x < 24 and 10 <= y < 26 else bytes(3)
        rows += bytes(row)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def check_mp4(data: bytes, path: pathlib.Path, frames: int, size: tuple[int, int]) -> None:
    assert data[4:8] == b"ftyp", "an MP4 file"
    path.write_bytes(data)
    if shutil.which("ffprobe"):
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
            check=True, capture_output=True, text=True,
        )
        stream = json.loads(out.stdout)["streams"][0]
        assert stream["codec_name"] == "h264"
        assert (int(stream["width"]), int(stream["height"])) == size, stream
        assert int(stream["nb_read_frames"]) == frames, stream


def test_create_and_poll_then_download_every_variant(client, tmp_path):
    video = client.videos.create_and_poll(prompt="a red circle moving right", seconds="1", size="64x64")
    assert video.status == "completed" and video.progress == 100, video
    assert video.object == "video" and video.model == "testcard" and video.prompt == "a red circle moving right"
    assert (video.seconds, video.size) == ("1.125", "64x64"), "1 s at 8 fps is 8 frames; the model makes 9 (1 + 4k)"
    assert video.created_at <= video.completed_at <= video.expires_at
    assert client.videos.retrieve(video.id).status == "completed"
    check_mp4(client.videos.download_content(video.id).read(), tmp_path / "v.mp4", frames=9, size=(64, 64))
    assert png_size(client.videos.download_content(video.id, variant="thumbnail").read()) == (64, 64)
    # 9 frames: a 3x3 grid of 64x64 tiles.
    assert png_size(client.videos.download_content(video.id, variant="spritesheet").read()) == (192, 192)


def test_an_input_reference_makes_it_image_to_video(client, tmp_path):
    image = ("start.png", io.BytesIO(red_square_png()), "image/png")
    video = client.videos.create_and_poll(prompt="a red square moving right", model="tiny-ti2v", input_reference=image)
    assert video.status == "completed", video
    assert (video.size, video.seconds) == ("32x32", "1.125"), "the model's defaults: 32x32, 9 frames at 8 fps"
    check_mp4(client.videos.download_content(video.id).read(), tmp_path / "i2v.mp4", frames=9, size=(32, 32))
    # A JSON body with a data URL as the reference object works too (the SDK itself sends only files in its form),
    # and a model without image input refuses an image, naming the field.
    data_url = "data:image/png;base64," + base64.b64encode(red_square_png()).decode()
    body = {"prompt": "x", "model": "tiny-ti2v", "seconds": 1, "input_reference": {"image_url": data_url}}
    again = client.post("/videos", body=body, cast_to=openai.types.Video)
    assert client.videos.poll(again.id).status == "completed"
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="x", model="noop", input_reference=image)
    assert info.value.param == "input_reference", info.value.body


def test_list_pages_through_this_scopes_videos_newest_first(client, server):
    made = [client.videos.create(prompt=f"a blue square {i}", seconds="1", size="32x32").id for i in range(3)]
    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == made[::-1][:2] and first.has_more
    rest = client.videos.list(limit=2, after=first.last_id)
    assert rest.data[0].id == made[0]
    # The SDK's auto-pagination follows `after` until `has_more` is false.
    everything = [v.id for v in client.videos.list(limit=2)]
    assert everything[:3] == made[::-1]
    oldest_first = [v.id for v in client.videos.list(order="asc", limit=100).data]
    assert oldest_first.index(made[0]) < oldest_first.index(made[2])
    # Another scope sees none of them.
    other = openai.OpenAI(base_url=server + "/v1", api_key=TOKEN + "-other", max_retries=0)
    assert other.videos.list().data == []
    with pytest.raises(openai.NotFoundError):
        other.videos.retrieve(made[0])


def test_remix_keeps_the_settings_with_a_new_prompt_and_delete_removes_it(client):
    original = client.videos.create_and_poll(prompt="a red circle", seconds="1", size="48x32")
    remixed = client.videos.remix(original.id, prompt="a green circle")
    assert remixed.remixed_from_video_id == original.id and remixed.prompt == "a green circle"
    remixed = client.videos.poll(remixed.id)
    assert (remixed.status, remixed.size, remixed.seconds) == ("completed", "48x32", "1.125")
    deleted = client.videos.delete(remixed.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (remixed.id, "video.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(remixed.id)


def test_errors_are_the_sdks_exceptions_with_param_set(client, server):
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("job-999999")
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_nope")
    for size in ("big", "0x64", "64x"):
        with pytest.raises(openai.BadRequestError) as info:
            client.videos.create(prompt="x", size=size)
        assert info.value.param == "size" and info.value.type == "invalid_request_error", info.value.body
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="x", seconds="-2")
    assert info.value.param == "seconds"
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="x", model="sora-2")
    assert info.value.param == "model" and "testcard" in str(info.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).videos.list()
    # Sizes and lengths the model cannot make exactly are snapped, and the answer says to what.
    video = client.videos.create(prompt="x", size="70x50", seconds="1.3")
    assert (video.size, video.seconds) == ("64x48", "1.125"), video
