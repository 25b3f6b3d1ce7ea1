"""The guide's sample aiohttp client, unchanged, against the built `vgen-server` binary.

`VideoGenerationClient` below is the class from the guide's "Basic Async Video Generation Pattern" as written
there (the guide's snippet uses `random` without importing it; the import is at the top of this file). The
server is started as a subprocess on a free port with the built-in `testcard` model (`server_process.py`), and
the test downloads each video from the `result_url` the client returns and checks that it is an MP4 file.

Run by `make test-server`; `VGEN_SERVER` names the binary (default: target/debug/vgen-server).
"""

import asyncio
import json
import pathlib
import random
import shutil
import subprocess
from typing import Optional

import aiohttp
import pytest

from server_process import running

TOKEN = "python-client-token-0123456789"


# --- the guide's client, as written ------------------------------------------------------------------------------

class VideoGenerationClient:
    def __init__(self, api_url: str, api_key: str):
        self.api_url = api_url
        self.api_key = api_key

    async def generate_video(
        self,
        prompt: str,
        duration: int = 5,
        resolution: str = "1080p"
    ) -> str:
        """Generate video and return download URL"""

        # Submit generation request
        job_id = await self._submit_generation(prompt, duration, resolution)

        # Poll for completion
        result_url = await self._poll_for_completion(job_id)

        return result_url

    async def _submit_generation(self, prompt: str, duration: int, resolution: str) -> str:
        async with aiohttp.ClientSession() as session:
            payload = {
                "prompt": prompt,
                "duration": duration,
                "resolution": resolution
            }
            headers = {"Authorization": f"Bearer {self.api_key}"}

            async with session.post(
                f"{self.api_url}/generate",
                json=payload,
                headers=headers
            ) as response:
                data = await response.json()
                return data["job_id"]

    async def _poll_for_completion(self, job_id: str, max_attempts: int = 60) -> str:
        """Poll job status with exponential backoff"""

        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {self.api_key}"}

            for attempt in range(max_attempts):
                try:
                    async with session.get(
                        f"{self.api_url}/jobs/{job_id}",
                        headers=headers
                    ) as response:
                        data = await response.json()

                        if data["status"] == "completed":
                            return data["result_url"]
                        elif data["status"] == "failed":
                            raise Exception(f"Generation failed: {data.get('error')}")

                        # Exponential backoff with jitter
                        delay = min(2 ** attempt, 30) + random.uniform(0, 3)
                        await asyncio.sleep(delay)

                except Exception as e:
                    if attempt == max_attempts - 1:
                        raise
                    await asyncio.sleep(5)  # Brief pause before retry

            raise TimeoutError("Video generation timed out")


# --- the server --------------------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """The built binary on a free port (see server_process.py); stopped with SIGTERM, which must exit 0."""
    with running(tmp_path, {TOKEN: "python"}) as url:
        yield url


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "video/mp4"
            return await response.read()


def check_mp4(data: bytes, path: pathlib.Path, frames: Optional[int]) -> None:
    assert len(data) > 1000, f"only {len(data)} bytes"
    assert data[4:8] == b"ftyp", "an MP4 file starts with its ftyp box"
    assert 16 <= int.from_bytes(data[0:4], "big") <= 256
    assert b"moov" in data
    # A real decoder agrees, where one is installed (`make test` installs ffprobe).
    if frames is not None and shutil.which("ffprobe"):
        path.write_bytes(data)
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
            check=True, capture_output=True, text=True,
        )
        stream = json.loads(out.stdout)["streams"][0]
        assert stream["codec_name"] == "h264"
        assert int(stream["nb_read_frames"]) == frames, stream


# --- the tests ---------------------------------------------------------------------------------------------------

def test_the_guides_client_gets_a_video(server, tmp_path):
    async def main():
        client = VideoGenerationClient(server, TOKEN)
        # The guide's defaults are 5 s at 1080p; 144p (256x144) keeps the CPU test card quick.
        url = await client.generate_video("a red circle moving right", resolution="144p")
        assert url.startswith(server + "/jobs/job-") and url.endswith("/video"), url
        return await download(url)

    data = asyncio.run(main())
    # 5 s at the test card's 8 fps is 40 frames; the nearest count it accepts (1 + 4k) is 41.
    check_mp4(data, tmp_path / "a.mp4", frames=41)


def test_concurrent_clients_each_get_their_own_video(server, tmp_path):
    async def main():
        client = VideoGenerationClient(server, TOKEN)
        urls = await asyncio.gather(
            client.generate_video("a blue square", duration=1, resolution="144p"),
            client.generate_video("a green triangle", duration=2, resolution="144p"),
        )
        assert len(set(urls)) == 2
        return [await download(u) for u in urls]

    one, two = asyncio.run(main())
    check_mp4(one, tmp_path / "one.mp4", frames=9)
    check_mp4(two, tmp_path / "two.mp4", frames=17)
