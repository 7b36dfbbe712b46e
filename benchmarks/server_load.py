"""Load on `facestudio serve`: many generation requests, or many large uploads, at once, tiny model, loopback.

The server runs as its own process (`facestudio serve --base-model tiny --adapter tiny`), so its memory is
measured alone. After one warm-up job, N clients post a generation each at the same moment (64x64, 2 steps)
and follow it to its end; a monitor polls /v1/queue meanwhile. The run checks, and exits non-zero if any fails:
no 5xx; every request either completes (done) or is refused with 429 and a Retry-After; the waiting queue never
exceeds its bound; no temporary or partial file in the data folder (every PNG decodes); the server's resident
memory after the run within 10% of before (after warm-up). It prints requests/s, images/s and p50/p95 latency.

With `--scenario uploads`, N clients (default 20) each post an identity of 8 photos of 7000x7000 pixels (JPEGs
made here from the test photo, about 10 MB a request) at the same moment; a monitor samples the server process's
resident memory every 20 ms. It checks that every request answers 201, 413, 422 or 429 and that the server's
peak memory stays under --max-rss-gb (default 1.5), and prints the peak, the answers and their latency.

    python benchmarks/server_load.py [--requests 100] [--queue-size 16] [--time-limit 300]
    python benchmarks/server_load.py --scenario uploads [--uploads 20] [--photos 8] [--side 7000]
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from PIL import Image

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "obama.jpg"
JOB = {"width": 64, "height": 64, "steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, queue_size: int, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "facestudio.cli", "serve", "--base-model", "tiny", "--adapter", "tiny",
               "--port", str(port), "--data-dir", str(data_dir), "--queue-size", str(queue_size),
               "--keep-jobs", "1000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server stopped at start:\n{process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit("the server did not start within 180 s")


def large_photo(side: int) -> bytes:
    """The test photo scaled up onto a `side` x `side` canvas, as a JPEG (a phone's photo, but larger)."""
    with Image.open(PHOTO) as photo:
        photo = photo.convert("RGB")
        height = round(side * 0.8)
        scaled = photo.resize((round(photo.width * height / photo.height), height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(scaled, ((side - scaled.width) // 2, (side - height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=40)
    return buffer.getvalue()


def peak_memory(pid: int, stop: threading.Event, peak: list) -> None:
    """The highest resident memory of process `pid` seen until `stop`, into `peak[0]`."""
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.02)


def upload_load(args) -> int:
    photo = large_photo(args.side)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(data_dir, args.queue_size, port)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:  # warm-up: detector and encoder loaded
                warm = client.post("/v1/identities", files=[("photos", (PHOTO.name, PHOTO.read_bytes()))])
                assert warm.status_code == 201, warm.text
            before = psutil.Process(server.pid).memory_info().rss
            start, stop, peak = threading.Event(), threading.Event(), [before]
            watcher = threading.Thread(target=peak_memory, args=(server.pid, stop, peak), daemon=True)
            watcher.start()
            files = [("photos", (f"photo{i}.jpg", photo, "image/jpeg")) for i in range(args.photos)]

            def one(i: int) -> dict:
                with httpx.Client(base_url=url, timeout=args.time_limit) as client:
                    start.wait()
                    t0 = time.perf_counter()
                    response = client.post("/v1/identities", files=files, data={"name": f"person {i}"})
                    return {"status": response.status_code, "latency": time.perf_counter() - t0,
                            "body": response.text[:200]}

            with ThreadPoolExecutor(max_workers=args.uploads) as pool:
                futures = [pool.submit(one, i) for i in range(args.uploads)]
                time.sleep(0.5)
                t0 = time.perf_counter()
                start.set()
                results = [f.result() for f in futures]
                wall = time.perf_counter() - t0
            time.sleep(0.5)
            stop.set()
            watcher.join()
        finally:
            server.terminate()
            server.wait(30)

    counts = {code: sum(r["status"] == code for r in results) for code in sorted({r["status"] for r in results})}
    latencies = [r["latency"] for r in results]
    print(f"{args.uploads} concurrent identity uploads of {args.photos} photos of {args.side}x{args.side} "
          f"({len(photo) * args.photos / 1e6:.1f} MB a request), tiny model")
    print(f"  answers: {', '.join(f'{code}: {n}' for code, n in counts.items())}; wall {wall:.1f} s, latency p50 "
          f"{percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s")
    print(f"  server memory (RSS): after warm-up {before / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} MiB "
          f"(+{(peak[0] - before) / 2**20:.0f} MiB; limit {args.max_rss_gb:g} GB)")
    failures = []
    unexpected = [r for r in results if r["status"] not in (201, 413, 422, 429)]
    if unexpected:
        failures.append(f"{len(unexpected)} answers other than 201/413/422/429: {unexpected[:3]}")
    if peak[0] > args.max_rss_gb * 1e9:
        failures.append(f"peak memory {peak[0] / 1e9:.2f} GB is over {args.max_rss_gb:g} GB")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def follow(client: httpx.Client, job_id: str, deadline: float) -> dict:
    """The job's final status, read from its event stream."""
    with client.stream("GET", f"/v1/generations/{job_id}/events", timeout=max(1.0, deadline - time.monotonic())) as s:
        for line in s.iter_lines():
            if line.startswith("event: end"):
                break
    return client.get(f"/v1/generations/{job_id}").json()


def one_request(url: str, identity: str, i: int, start: threading.Event, deadline: float) -> dict:
    with httpx.Client(base_url=url, timeout=60) as client:
        start.wait()
        t0 = time.perf_counter()
        body = {"prompt": f"portrait number {i}", "seed": i, "identities": [{"id": identity}], **JOB}
        response = client.post("/v1/generations", json=body)
        answered = time.perf_counter() - t0
        result = {"status": response.status_code, "answered": answered}
        if response.status_code == 429:
            result["retry_after"] = response.headers.get("Retry-After")
        elif response.status_code == 202:
            final = follow(client, response.json()["id"], deadline)
            result.update(state=final["state"], latency=time.perf_counter() - t0, images=len(final["images"]))
        else:
            result["body"] = response.text[:300]
        return result


def monitor(url: str, stop: threading.Event, seen: list) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                seen.append(client.get("/v1/queue").json()["waiting"])
            except httpx.HTTPError:
                pass
            time.sleep(0.02)


def check_files(data_dir: Path) -> tuple[int, list[str]]:
    problems = [f"temporary file left: {p}" for p in data_dir.rglob("*.tmp")]
    pngs = list((data_dir / "jobs").rglob("*.png"))
    for png in pngs:
        try:
            with Image.open(png) as image:
                image.load()
        except Exception as e:
            problems.append(f"{png}: does not decode ({e})")
    return len(pngs), problems


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("generations", "uploads"), default="generations")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds the whole load may take")
    parser.add_argument("--uploads", type=int, default=20, help="uploads scenario: concurrent uploads")
    parser.add_argument("--photos", type=int, default=8, help="uploads scenario: photos per upload")
    parser.add_argument("--side", type=int, default=7000, help="uploads scenario: photo width and height")
    parser.add_argument("--max-rss-gb", type=float, default=1.5, help="uploads scenario: allowed peak memory")
    args = parser.parse_args()
    return upload_load(args) if args.scenario == "uploads" else generation_load(args)


def generation_load(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(data_dir, args.queue_size, port)
        try:
            rss = psutil.Process(server.pid).memory_info
            with httpx.Client(base_url=url, timeout=60) as client:
                upload = client.post("/v1/identities", files=[("photos", (PHOTO.name, PHOTO.read_bytes()))])
                identity = upload.json()["id"]
                warm = client.post("/v1/generations",
                                   json={"prompt": "warm-up", **JOB, "identities": [{"id": identity}]})
                follow(client, warm.json()["id"], time.monotonic() + 120)
            before = rss().rss

            start, stop, waiting = threading.Event(), threading.Event(), []
            watcher = threading.Thread(target=monitor, args=(url, stop, waiting), daemon=True)
            watcher.start()
            deadline = time.monotonic() + args.time_limit
            with ThreadPoolExecutor(max_workers=args.requests) as pool:
                futures = [pool.submit(one_request, url, identity, i, start, deadline) for i in range(args.requests)]
                time.sleep(0.5)  # every client is connected and waiting
                t0 = time.perf_counter()
                start.set()
                results = [f.result(timeout=max(1.0, deadline - time.monotonic())) for f in futures]
                wall = time.perf_counter() - t0
            stop.set()
            watcher.join()
            time.sleep(1.0)  # let the server settle before reading its memory
            after = rss().rss
            with httpx.Client(base_url=url, timeout=10) as client:
                queue = client.get("/v1/queue").json()
        finally:
            server.terminate()
            server.wait(30)
        png_count, problems = check_files(data_dir)

    done = [r for r in results if r.get("state") == "done"]
    refused = [r for r in results if r["status"] == 429]
    errors = [r for r in results if r["status"] >= 500]
    other = [r for r in results if r not in done and r not in refused]
    latencies = [r["latency"] for r in done]
    refusals = [r["answered"] for r in refused]
    print(f"{args.requests} concurrent generation requests, tiny model, {JOB['width']}x{JOB['height']}, "
          f"{JOB['steps']} steps, queue bound {args.queue_size}, 1 worker")
    print(f"  completed {len(done)}, refused with 429 {len(refused)}, 5xx {len(errors)}, other {len(other)}")
    print(f"  wall {wall:.2f} s: {len(results) / wall:.1f} requests answered/s, {len(done) / wall:.2f} images/s")
    print(f"  latency of completed jobs (post to done): p50 {percentile(latencies, 0.5):.2f} s, "
          f"p95 {percentile(latencies, 0.95):.2f} s")
    print(f"  time to a 429: p50 {1000 * percentile(refusals, 0.5):.0f} ms, "
          f"p95 {1000 * percentile(refusals, 0.95):.0f} ms")
    print(f"  queue: most waiting seen by the monitor {max(waiting, default=0)}, by the server "
          f"{queue['max_waiting_seen']} (bound {args.queue_size})")
    print(f"  server memory (RSS): before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB "
          f"(ratio {after / before:.3f})")
    print(f"  files: {png_count} PNGs, all decode; temporary files left: {len(problems)}" if not problems
          else "\n".join(f"  {p}" for p in problems))

    failures = []
    if errors or other:
        failures.append(f"{len(errors)} 5xx and {len(other)} other outcomes: {(errors + other)[:3]}")
    if any(not r.get("retry_after", "").isdigit() for r in refused):
        failures.append("a 429 without a Retry-After in seconds")
    if max(waiting, default=0) > args.queue_size or queue["max_waiting_seen"] > args.queue_size:
        failures.append("the queue grew past its bound")
    if any(r.get("images") != 1 for r in done):
        failures.append("a completed job without its image")
    if problems:
        failures.append("partial or temporary files on disk")
    if not 0.9 <= after / before <= 1.1:
        failures.append(f"memory after the run is {after / before:.3f} x before (allowed 0.9 to 1.1)")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
