"""The HTTP service through Starlette's ASGI test client: its answers equal infer's, bad input gets a 4xx JSON
error naming the fault and leaves the service working, a full queue answers 503, concurrent requests run as
batches; the batcher alone; serve.py's --help and its missing-extra line. The real server, the browser and the
load test are in test_serving_live.py."""
import asyncio
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_script
from mobilenetv3.cli import MODEL_FILE_KEYS
from mobilenetv3.config import build_config
from mobilenetv3.deploy.inference import class_names_of, load_model, predict_images
from mobilenetv3.serving.batching import Batcher
from mobilenetv3.errors import UserError
from mobilenetv3.serving.model import ServedModel, power_of_two_pieces
from mobilenetv3.serving.server import address_line, listening_socket

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx2", reason="Starlette's test client: pip install httpx2")
from starlette.testclient import TestClient  # noqa: E402

from mobilenetv3.serving.app import Limits, create_app  # noqa: E402

CLASSES = ["class_0", "class_1", "class_2"]
LIMITS = Limits(max_batch=4, max_wait_ms=5.0, max_bytes=200_000, max_queue=16, decode_threads=2, top_k=5)


def encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def noisy(colour, size=(40, 48), seed=0) -> np.ndarray:
    """An image like the training images of the class of `colour` (conftest.write_image_folder)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 40, (*size, 3)) + colour, 0, 255).astype(np.uint8)


IMAGES = {"red.jpg": encoded(noisy((200, 40, 40)), "JPEG", quality=95),
          "green.png": encoded(noisy((40, 200, 40), seed=1), "PNG"),
          "blue.webp": encoded(noisy((40, 40, 200), (64, 30), seed=2), "WEBP", quality=90)}


def served(path, **kwargs) -> ServedModel:
    config = build_config(overrides=dict(device_target="CPU", pretrained=str(path)))
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags)
    from mobilenetv3.data.preprocessing import resolve
    preprocessing, _ = resolve(config.preprocessing(), config.flags, meta)
    return ServedModel(predict, preprocessing, class_names_of(meta), meta["model"], "mindspore", **kwargs)


@pytest.fixture(scope="module")
def model(trained):
    return served(trained)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, LIMITS)) as client:
        yield client


@pytest.fixture(scope="module")
def expected(model, tmp_path_factory):
    """infer's predictions (deploy.inference.predict_images) for each of IMAGES: {name: Prediction}."""
    folder = tmp_path_factory.mktemp("infer")
    for name, blob in IMAGES.items():
        (folder / name).write_bytes(blob)
    predictions, skipped = predict_images(model.predict, folder, model.preprocessing, model.class_names, top_k=3)
    assert not skipped
    return {p.path.rsplit("/", 1)[1]: p for p in predictions}


def check_answer(answer: dict, prediction, k: int):
    assert answer["model"] == "mobilenet_v3_small" and answer["backend"] == "mindspore"
    assert answer["preprocessing"]["resize"] == 32 and answer["preprocessing"]["crop_pct"] == 0.875
    got = answer["predictions"]
    assert [p["index"] for p in got] == prediction.indices[:k]
    assert [p["label"] for p in got] == prediction.names[:k]
    assert np.allclose([p["probability"] for p in got], prediction.probs[:k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_predict_answers_what_infer_predicts_as_a_body_and_as_a_form(client, expected, name):
    kind = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[name.rsplit(".", 1)[1]]
    answer = client.post("/predict", content=IMAGES[name], headers={"Content-Type": kind})
    assert answer.status_code == 200, answer.text
    check_answer(answer.json(), expected[name], 3)  # the default top_k (5) cut to the model's 3 classes
    answer = client.post("/predict?top_k=2", files={"file": (name, IMAGES[name], "application/octet-stream")})
    assert answer.status_code == 200, answer.text
    check_answer(answer.json(), expected[name], 2)


def test_the_trained_colours_come_out_first(expected):
    """The fixture's model tells its colours apart, so the answers above compare meaningful rankings."""
    assert [expected[name].names[0] for name in ("red.jpg", "green.png", "blue.webp")] == CLASSES


def test_metadata_health_openapi_and_the_page(client):
    meta = client.get("/metadata").json()
    assert (meta["model"], meta["num_classes"], meta["classes"], meta["backend"]) == (
        "mobilenet_v3_small", 3, CLASSES, "mindspore")
    assert meta["preprocessing"]["resize"] == 32 and meta["version"] == "0.1.0"
    assert meta["limits"]["max_batch"] == 4 and meta["limits"]["max_bytes"] == 200_000
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["requests_in_progress"] == 0
    assert set(client.get("/openapi.json").json()["paths"]) == {"/predict", "/health", "/metadata"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "predict?top_k=" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text  # offline


def jpeg_claiming(width, height) -> bytes:
    """A small JPEG whose header (SOF0) says it is width x height: what a decompression bomb looks like."""
    blob = bytearray(IMAGES["red.jpg"])
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


def png_claiming(width, height) -> bytes:
    """A small PNG whose IHDR (with its CRC) says it is width x height."""
    blob = bytearray(IMAGES["green.png"])
    start = blob.index(b"IHDR")
    blob[start + 4:start + 12] = struct.pack(">II", width, height)
    blob[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(blob[start:start + 17])))
    return bytes(blob)


BAD_REQUESTS = {  # name: (path, body, content type, status, words the error must contain)
    "not an image": ("/predict", b"hello, this is not an image", "image/jpeg", 400, "not an image file"),
    "truncated JPEG": ("/predict", IMAGES["red.jpg"][:len(IMAGES["red.jpg"]) // 2], "image/jpeg", 400,
                       "truncated or corrupt"),
    "JPEG bomb": ("/predict", jpeg_claiming(60000, 60000), "image/jpeg", 413, "60000 x 60000 pixels"),
    "PNG bomb": ("/predict", png_claiming(10000, 6000), "image/png", 413, "10000 x 6000 pixels"),
    "PNG bomb past Pillow's limit": ("/predict", png_claiming(30000, 20000), "image/png", 413, "too many pixels"),
    "oversized body": ("/predict", b"\xff" * 200_001, "image/jpeg", 413, "over 200,000 bytes"),
    "wrong content type": ("/predict", IMAGES["red.jpg"], "text/plain", 415, "Content-Type text/plain"),
    "form encoding": ("/predict", IMAGES["red.jpg"], "application/x-www-form-urlencoded", 415, "curl -F"),
    "empty body": ("/predict", b"", "image/jpeg", 400, "body is empty"),
    "huge top_k": ("/predict?top_k=1000000000000000000000", IMAGES["red.jpg"], "image/jpeg", 400, "from 1 to 3"),
    "top_k above the classes": ("/predict?top_k=4", IMAGES["red.jpg"], "image/jpeg", 400, "from 1 to 3"),
    "top_k zero": ("/predict?top_k=0", IMAGES["red.jpg"], "image/jpeg", 400, "top_k must be"),
    "top_k not a number": ("/predict?top_k=five", IMAGES["red.jpg"], "image/jpeg", 400, "got 'five'"),
    "form without boundary": ("/predict", IMAGES["red.jpg"], "multipart/form-data", 400, "no boundary"),
    "form without a file": ("/predict", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
                            "multipart/form-data; boundary=x", 400, "has no file"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_json_4xx_naming_it_and_the_service_goes_on(client, expected, case):
    path, body, kind, status, words = BAD_REQUESTS[case]
    answer = client.post(path, content=body, headers={"Content-Type": kind})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"], answer.json()
    assert client.get("/health").json()["requests_in_progress"] == 0
    good = client.post("/predict", content=IMAGES["red.jpg"], headers={"Content-Type": "image/jpeg"})
    check_answer(good.json(), expected["red.jpg"], 3)


def test_a_body_without_content_length_is_cut_off_at_max_bytes(client, expected):
    chunks = [b"\xff" * 50_000] * 5  # sent chunked: the limit is found while reading
    answer = client.post("/predict", content=iter(chunks), headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 413 and "over 200,000 bytes" in answer.json()["error"]
    blob = IMAGES["red.jpg"]
    answer = client.post("/predict", content=iter([blob[:100], blob[100:]]), headers={"Content-Type": "image/jpeg"})
    check_answer(answer.json(), expected["red.jpg"], 3)


def test_a_wrong_method_or_path_is_json_too(client):
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json()
    assert client.get("/nothing").status_code == 404 and "error" in client.get("/nothing").json()


def test_the_pixel_limit_is_the_models(trained):
    """An image just over a lower limit is refused; at the limit it is answered."""
    small = served(trained, max_pixels=40 * 48)
    with TestClient(create_app(small, LIMITS)) as client:
        at_limit = client.post("/predict", content=IMAGES["red.jpg"], headers={"Content-Type": "image/jpeg"})
        over = client.post("/predict", content=encoded(noisy((200, 40, 40), (40, 49)), "PNG"),
                           headers={"Content-Type": "image/png"})
    assert at_limit.status_code == 200 and over.status_code == 413 and "49 x 40 pixels" in over.json()["error"]


async def concurrently(app, requests):
    """[(status, json, headers)] of requests [(path, body, content type)] sent at once through ASGI, with the
    app's lifespan around them; `requests` may also hold callables run at that point (awaited)."""
    import httpx2 as httpx
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            async def send(path, body, kind):
                answer = await client.post(path, content=body, headers={"Content-Type": kind})
                return answer.status_code, answer.json(), answer.headers
            return await asyncio.gather(*(send(*request) for request in requests))


def test_concurrent_requests_run_as_batches_each_getting_its_own_answer(model, expected):
    limits = Limits(max_batch=4, max_wait_ms=500.0, max_bytes=200_000, max_queue=16, decode_threads=2, top_k=3)
    sizes = []

    def recording(images):
        sizes.append(len(images))
        return model.predict(images)

    app = create_app(ServedModel(recording, model.preprocessing, model.class_names, model.name, "mindspore"), limits)
    names = sorted(IMAGES) * 3  # 9 requests: batches of at most 4
    kinds = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
    answers = asyncio.run(concurrently(app, [("/predict", IMAGES[n], kinds[n.rsplit(".", 1)[1]]) for n in names]))
    for name, (status, answer, _) in zip(names, answers):
        assert status == 200
        check_answer(answer, expected[name], 3)
    assert sum(sizes) == 9 and max(sizes) <= 4 and max(sizes) > 1, sizes
    assert all(size & (size - 1) == 0 for size in sizes), sizes  # power-of-two pieces only


def test_a_full_queue_answers_503_with_retry_after_and_recovers(model):
    limits = Limits(max_batch=4, max_wait_ms=0.0, max_bytes=200_000, max_queue=2, decode_threads=2, top_k=3)
    release = threading.Event()

    def stuck(images):
        release.wait(60)
        return model.predict(images)

    app = create_app(ServedModel(stuck, model.preprocessing, model.class_names, model.name, "mindspore"), limits)

    async def scenario():
        import httpx2 as httpx
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                def post():
                    return client.post("/predict", content=IMAGES["red.jpg"], headers={"Content-Type": "image/jpeg"})
                held = [asyncio.ensure_future(post()) for _ in range(2)]
                while (await client.get("/health")).json()["requests_in_progress"] < 2:
                    await asyncio.sleep(0.01)
                refused = await post()
                release.set()
                return refused, [await answer for answer in held], await post()

    refused, held, after = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "2 requests in progress" in refused.json()["error"]
    assert [answer.status_code for answer in held] == [200, 200] and after.status_code == 200


def test_the_socket_refuses_a_taken_port_and_serves_without_nagle_delay():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections of a socket made with IPPROTO_TCP
    named; with it on, a response's body waited 40 ms for the client's delayed ACK of its headers."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1 port {port} .*pass another --port"):
        listening_socket("127.0.0.1", port)
    assert address_line(sock).startswith(f"http://127.0.0.1:{port}/ (this machine only")

    async def accepted_nodelay():
        accepted = asyncio.get_running_loop().create_future()

        async def on_connection(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        nodelay = await accepted
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay

    assert asyncio.run(accepted_nodelay()) != 0  # the server closed the socket


def test_power_of_two_pieces():
    assert power_of_two_pieces(13) == [8, 4, 1] and power_of_two_pieces(32) == [32]
    assert power_of_two_pieces(1) == [1] and power_of_two_pieces(0) == []
    assert all(sum(power_of_two_pieces(n)) == n for n in range(100))


def run_batches(items, max_batch, max_wait, run_batch=None, close_after=None, on_the_way=None):
    """(results or exceptions of submitting `items` at once, the batches run, seconds until all were done)."""
    batches = []

    def default(batch):
        batches.append(list(batch))
        return [item * 10 for item in batch]

    async def scenario():
        batcher = Batcher(run_batch or default, max_batch, max_wait, on_the_way)
        batcher.start()
        start = time.perf_counter()
        tasks = [asyncio.ensure_future(batcher.submit(item)) for item in items]
        if close_after is not None:
            await asyncio.sleep(close_after)
            await batcher.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - start
        await batcher.close()
        return results, elapsed

    results, elapsed = asyncio.run(scenario())
    return results, batches, elapsed


def test_the_batcher_fills_batches_up_to_max_batch_in_arrival_order():
    results, batches, elapsed = run_batches(list(range(10)), max_batch=4, max_wait=5.0)
    assert results == [i * 10 for i in range(10)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert 5.0 <= elapsed < 7.0  # the last two waited max_wait for company that never came


def test_the_batcher_does_not_wait_when_a_batch_is_full_and_waits_max_wait_otherwise():
    _, batches, elapsed = run_batches([1, 2], max_batch=2, max_wait=5.0)
    assert batches == [[1, 2]] and elapsed < 1.0
    _, batches, elapsed = run_batches([1], max_batch=2, max_wait=0.3)
    assert batches == [[1]] and 0.3 <= elapsed < 1.5


def test_the_batcher_waits_only_while_more_are_on_their_way():
    _, batches, elapsed = run_batches([1], max_batch=2, max_wait=5.0, on_the_way=lambda: 0)
    assert batches == [[1]] and elapsed < 1.0
    _, batches, elapsed = run_batches([1], max_batch=2, max_wait=0.3, on_the_way=lambda: 1)
    assert batches == [[1]] and 0.3 <= elapsed < 1.5


def test_a_failing_batch_fails_its_own_requests_only():
    def run_batch(batch):
        if 2 in batch:
            raise RuntimeError("the model failed")
        return batch

    results, _, _ = run_batches([0, 1, 2, 3, 4, 5], max_batch=3, max_wait=0.05, run_batch=run_batch)
    assert results[3:] == [3, 4, 5]
    assert all(isinstance(r, RuntimeError) and str(r) == "the model failed" for r in results[:3])


def test_closing_the_batcher_runs_what_waits_at_once():
    results, batches, elapsed = run_batches([1, 2, 3], max_batch=8, max_wait=30.0, close_after=0.1)
    assert results == [10, 20, 30] and batches == [[1, 2, 3]] and elapsed < 5.0


def test_serve_help_needs_no_mindspore_and_a_missing_extra_is_one_line():
    result = run_script("serve", "--help", timeout=120)
    assert result.returncode == 0 and "--max_batch" in result.stdout and "pip install -e '.[serve]'" in result.stdout
    blocker = ("import importlib.abc, runpy, sys\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('uvicorn', 'python_multipart'):\n"
               "            raise ModuleNotFoundError(name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "sys.argv = ['serve.py', '--device_target', 'CPU', '--pretrained', 'model.ckpt']\n"
               "try:\n    runpy.run_path(%r, run_name='__main__')\n"
               "finally:\n    print('mindspore' in sys.modules)\n") % str(REPO / "scripts" / "serve.py")
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: serving needs uvicorn, python-multipart, not installed here: "
                                     "pip install -e '.[serve]'")
    assert result.stdout.strip() == "False"
