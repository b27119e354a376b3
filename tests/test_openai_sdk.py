"""The official `openai` package, a client nobody here wrote, against a live service: every call of its Videos
resource (create, create_and_poll, retrieve, list, download_content with each variant, remix, extend with an
upload and with a finished video's id, delete) and its errors carrying our message and `param`. If the API's
shape drifts from OpenAI's, these fail. The example of docs/api.md runs here too."""

import io
import re
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from .conftest import read_video
from .service_helpers import Server

pytestmark = pytest.mark.slow  # makes several videos through a service of its own
pytestmark = [pytestmark, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # the SDK marks Videos deprecated

SMALL = {"seed": 3, "steps": 2, "frames": 9}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def server(hub_models, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("sdk") / "state", "--model", "tiny") as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-127.0.0.1", max_retries=0)


@pytest.fixture(scope="module")
def made(client):
    """One clip made through create_and_poll."""
    video = client.videos.create_and_poll(prompt="a red fox", model="tiny", size="80x48", extra_body=SMALL,
                                          poll_interval_ms=100)
    assert video.status == "completed", video
    return video


def test_create_retrieve_list_and_download(client, made, server):
    assert made.object == "video" and made.size == "80x48" and made.model == "tiny-df" and made.progress == 100
    assert made.completed_at >= made.created_at and made.remixed_from_video_id is None and made.expires_at is None
    assert made.seconds == "0.38"  # 9 frames at 24 fps
    again = client.videos.retrieve(made.id)
    assert again.id == made.id and again.status == "completed" and again.model_extra["seed"] == 3
    assert made.id in [v.id for v in client.videos.list(limit=10)]
    video = client.videos.download_content(made.id).read()
    assert video == server.content(made.id), "the same bytes as the API's own download"
    assert read_video_bytes(video, server).shape[:3] == (9, 48, 80)

    queued = client.videos.create(prompt="a cat", model="tiny", size="80x48", extra_body=SMALL)
    assert queued.status in ("queued", "in_progress", "completed") and queued.id != made.id
    # two videos at least now, so the order shows: oldest first with order="asc"
    listed = [v.id for v in client.videos.list(limit=100, order="asc")]
    assert listed == [v.id for v in client.videos.list(limit=100, order="desc")][::-1] and made.id in listed
    assert listed.index(made.id) < listed.index(queued.id)


def test_thumbnail_and_spritesheet(client, made, server):
    thumbnail = Image.open(io.BytesIO(client.videos.download_content(made.id, variant="thumbnail").read()))
    assert thumbnail.size == (80, 48), "the video's size"
    first = read_video_bytes(server.content(made.id), server)[0].astype(int)
    assert abs(first - np.asarray(thumbnail.convert("RGB")).astype(int)).mean() < 8, "its first frame"
    sheet = Image.open(io.BytesIO(client.videos.download_content(made.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.size == (80 * 3, 48 * 3), "9 frames spread over the video, 3x3"


def test_remix_keeps_the_request_and_seed_with_a_new_prompt(client, made, server):
    remixed = client.videos.remix(made.id, prompt="a blue fox")
    assert remixed.remixed_from_video_id == made.id and remixed.prompt == "a blue fox"
    assert remixed.model_extra["seed"] == 3 and remixed.model_extra["frames"] == 9
    done = server.wait(remixed.id, "completed")
    assert server.content(done["id"]) != server.content(made.id), "the prompt changed the video"
    same = client.videos.remix(made.id, prompt="a red fox")  # the original prompt: the original video
    assert server.content(server.wait(same.id, "completed")["id"]) == server.content(made.id)


def test_extend_an_upload_and_a_finished_video(client, made, server):
    window = {"steps": 2, "seed": 4, "overlap": 5, "base_frames": 17}
    by_file = client.videos.extend(prompt="the fox runs on", seconds="1",
                                   video=("clip.mp4", server.content(made.id), "video/mp4"), extra_body=window)
    # The SDK's extend() takes a file only (3.63 refuses its own {"id": ...} at a file's place): sent as JSON
    by_id = client.post("/videos/extensions", cast_to=openai.types.Video,
                        body={"prompt": "the fox runs on", "seconds": "1", "video": {"id": made.id}, **window})
    a, b = (server.wait(v.id, "completed") for v in (by_file, by_id))
    assert a["command"] == "extend" and a["frames"] == 24, "seconds: the new part, 24 frames at 24 fps"
    frames = read_video_bytes(server.content(a["id"]), server)
    assert len(frames) == 9 + 24, "the clip continued"
    # the same frames (the MP4s' metadata still differ: each names its own upload's path, see docs/api.md)
    assert (read_video_bytes(server.content(b["id"]), server) == frames).all(), "an upload and the same video by id"


def test_input_reference_as_a_data_url(client, server):
    image = io.BytesIO()
    Image.new("RGB", (80, 48), (200, 40, 40)).save(image, format="PNG")
    import base64

    url = "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()
    # The SDK's create() takes a file only at input_reference (3.63 refuses the object): sent as JSON
    video = client.post("/videos", cast_to=openai.types.Video, body={
        "prompt": "a red fox", "model": "tiny", "input_reference": {"image_url": url}, **SMALL, "command": "extend"})
    assert server.wait(video.id, "completed")["command"] == "extend"
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/videos", cast_to=openai.types.Video, body={
            "prompt": "a fox", "model": "tiny", "input_reference": {"image_url": "https://example.com/a.png"},
            **SMALL, "command": "extend"})
    assert err.value.param == "input_reference" and "network" in err.value.message


def test_errors_carry_our_message_and_param(client, made):
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="a fox", model="tiny", extra_body={"frames": -4})
    assert err.value.param == "frames" and '"frames": -4' in err.value.message and err.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="a fox", model="sora-2")
    assert err.value.param == "model" and "not offered here" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.videos.retrieve("video_" + "0" * 24)
    assert err.value.param == "id"
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.remix(made.id, prompt="")
    assert err.value.param == "prompt"


def test_delete(client):
    video = client.videos.create(prompt="a short-lived fox", model="tiny", extra_body=SMALL)
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_the_docs_example_runs(server, tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S)[1]
    monkeypatch.setenv("SKYREELS_URL", server.url + "/v1")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOCS), "exec"), {})
    assert Image.open(tmp_path / "fox.webp").size == (80, 48) and (tmp_path / "fox.mp4").stat().st_size > 0


def read_video_bytes(data: bytes, server):
    path = server.state_dir.parent / f"read-{len(data)}.mp4"
    path.write_bytes(data)
    return read_video(path)[0]
