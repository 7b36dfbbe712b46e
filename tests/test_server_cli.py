"""`facestudio serve` as a user starts it: a real process, the tiny model, requests over loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from facestudio.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(tmp_path, *options):
    port = free_port()
    command = [sys.executable, "-m", "facestudio.cli", "serve", "--base-model", "tiny", "--adapter", "tiny",
               "--port", str(port), "--data-dir", str(tmp_path / "data"), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "page with the token" in line:  # the last line printed before uvicorn starts
            break
    return process, port, lines


def stop(process):
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def test_any_other_address_needs_the_printed_token(tmp_path):
    process, port, lines = start_serve(tmp_path, "--host", "0.0.0.0")
    try:
        output = "".join(lines)
        assert "listening on 0.0.0.0" in output and "Authorization: Bearer " in output, output
        token = output.split("Authorization: Bearer ", 1)[1].split("'", 1)[0]
        assert len(token) >= 16
        wait_until_listening(port)
        url = f"http://127.0.0.1:{port}/v1/models"
        refused = httpx.get(url, timeout=30)
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert httpx.get(url, headers={"Authorization": "Bearer " + token[:-1]}, timeout=30).status_code == 401
        allowed = httpx.get(url, headers={"Authorization": "Bearer " + token}, timeout=30)
        assert allowed.status_code == 200 and allowed.json()["base_model"] == "tiny"
    finally:
        stop(process)


@pytest.mark.parametrize("options,words", [
    (["--token", "short"], "at least 16 characters"),
    (["--port", "70000"], "--port 70000"),
    (["--queue-size", "0"], "--queue-size 0"),
])
def test_bad_serve_options_are_one_line_and_exit_2(options, words, capsys, tmp_path):
    status = main(["serve", "--base-model", "tiny", "--data-dir", str(tmp_path), *options])
    error = capsys.readouterr().err
    assert status == 2 and words in error and error.count("\n") == 1
