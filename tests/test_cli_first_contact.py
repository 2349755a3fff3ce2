"""The paths a new user takes (issue 26): mistakes caught before anything is sent.

Every test runs ``python -m asyncimg`` as a subprocess; servers are emulators on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asyncimg._batch.control import UNREACHABLE_AFTER
from asyncimg.cli import EXIT_FATAL, EXIT_USAGE
from asyncimg.testing import emulator_thread

from .pictures import encode, quadrants

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-first-contact"
DALLE = ["--model", "dall-e-2", "--size", "256x256"]


def _env(**extra: str) -> dict[str, str]:
    drop = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ASYNCIMG_REDIS_URL", "AZURE_OPENAI_ENDPOINT",
            "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION")
    return {k: v for k, v in os.environ.items() if k not in drop} | extra


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env=env or _env(), timeout=60, check=False,
    )


@pytest.mark.parametrize("command", ["generate", "edit", "variation"])
def test_a_bad_output_is_refused_before_sending(tmp_path: Path, command: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    image = tmp_path / "square.png"
    image.write_bytes(encode(quadrants(64, 64, "RGBA")))
    inputs = {"generate": ["a lantern"], "edit": [str(image), "a hat"],
              "variation": [str(image)]}[command]
    with emulator_thread(api_key=KEY) as emu:
        for target in (afile, afile / "sub"):
            run = _cli(command, *inputs, "-o", str(target), "--base-url", emu.base_url, *DALLE,
                       env=_env(OPENAI_API_KEY=KEY))
            assert run.returncode == EXIT_USAGE, run.stderr
            assert "-o:" in run.stderr
        assert emu.requests() == []  # nothing paid for, nothing lost


def test_batches_of_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    for action in ("status", "cancel"):
        run = _cli("batches", action, str(tmp_path / "nonexistent"))
        assert run.returncode == EXIT_USAGE, run.stderr
        assert "no such directory" in run.stderr


def test_batches_help_lists_only_what_it_uses() -> None:
    helped = _cli("batches", "status", "--help").stdout
    for useless in ("--rate", "--redis", "--limit-name", "--concurrency", "--emulator"):
        assert useless not in helped
    assert "--base-url" in helped


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_with_a_bad_port_is_a_usage_error(port: str) -> None:
    run = _cli("serve", "--port", port)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "--port" in run.stderr
    assert "Traceback" not in run.stderr


AZURE_KEY = "azure-key-first-contact"
VERSION = "2025-04-01-preview"


def test_azure_from_the_sdk_environment_variables(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\na kite\n")
    with emulator_thread(azure=True, api_key=AZURE_KEY) as emu:
        env = _env(AZURE_OPENAI_ENDPOINT=emu.endpoint, AZURE_OPENAI_API_KEY=AZURE_KEY,
                   OPENAI_API_VERSION=VERSION)
        one = _cli("generate", "a lantern", "-o", str(tmp_path / "one"), "--deployment", "dalle",
                   *DALLE, env=env)
        assert one.returncode == 0, one.stderr
        assert Path(one.stdout.split()[0]).is_file()
        many = _cli("batch", str(prompts), "-o", str(tmp_path / "many"), "--deployment",
                    "dalle", *DALLE, env=env)
        assert many.returncode == 0, many.stderr
        sent = emu.requests("/openai/deployments/dalle/images/generations")
        assert len(sent) == 3
        # The emulator checks the key (as api-key, never a bearer token) and the version.
        assert [entry.status for entry in sent] == [200] * 3
        assert {entry.query.get("api-version") for entry in sent} == {VERSION}
        assert all("authorization" not in {k.lower() for k in entry.headers} for entry in sent)


def test_azure_from_flags_and_what_is_missing(tmp_path: Path) -> None:
    with emulator_thread(azure=True, api_key=AZURE_KEY) as emu:
        env = _env(AZURE_OPENAI_API_KEY=AZURE_KEY)
        flags = ["--azure-endpoint", emu.endpoint, "--api-version", VERSION]
        # Without --deployment, --model names the deployment, as in the SDK.
        done = _cli("generate", "a lantern", "-o", str(tmp_path), *flags, *DALLE, env=env)
        assert done.returncode == 0, done.stderr
        assert len(emu.requests("/openai/deployments/dall-e-2/images/generations")) == 1
        for args, env_, said in [
            (["--azure-endpoint", emu.endpoint], env, "--api-version"),
            (flags, _env(), "AZURE_OPENAI_API_KEY"),
            ([*flags, "--base-url", emu.base_url], env, "not with --base-url"),
            (["--azure-endpoint", "ftp://x", "--api-version", VERSION], env, "--azure-endpoint"),
        ]:
            run = _cli("generate", "p", "-o", str(tmp_path), *args, *DALLE, env=env_)
            assert run.returncode == EXIT_USAGE, (args, run.stderr)
            assert said in run.stderr, run.stderr
        assert len(emu.requests(method="POST")) == 1  # no usage error sent anything
        refused = _cli("generate", "p", "-o", str(tmp_path), *flags, *DALLE,
                       env=_env(AZURE_OPENAI_API_KEY="azure-key-wrong"))
        assert refused.returncode == EXIT_FATAL, refused.stderr
        assert "for Azure AZURE_OPENAI_API_KEY" in refused.stderr  # what to check
        assert "azure-key-wrong" not in refused.stderr


def _batch(src: Path, out: Path, emu_url: str, *more: str) -> subprocess.CompletedProcess[str]:
    return _cli("batch", str(src), "-o", str(out), "--base-url", emu_url, *DALLE, *more,
                env=_env(OPENAI_API_KEY=KEY))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("prompt,size,colour\na cat,256x256,red\n", "'colour'"),
        ("id,prompt\nx,a cat\nx,a dog\n", "line 3: the id 'x' is the id of line 2"),
        ("id,prompt\nok,a cat\n../up,a dog\n", "line 3: the id '../up'"),
    ],
)
def test_csv_columns_are_decided_before_sending(tmp_path: Path, text: str, said: str) -> None:
    src = tmp_path / "p.csv"
    src.write_text(text)
    with emulator_thread(api_key=KEY) as emu:
        run = _batch(src, tmp_path / "out", emu.base_url)
        assert run.returncode == EXIT_USAGE, run.stderr
        assert said in run.stderr
        assert emu.requests() == []  # not a failure per row: nothing sent


def test_an_id_column_names_the_item(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text("id,prompt,size\ncat-1,a cat,256x256\ndog.2,a dog,\n")
    out = tmp_path / "out"
    with emulator_thread(api_key=KEY) as emu:
        run = _batch(src, out, emu.base_url, "-q")
        assert run.returncode == 0, run.stderr
        assert sorted(p.name for p in out.glob("*.png")) == ["cat-1-0.png", "dog.2-0.png"]
        manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        # Items finish in any order: the manifest's lines too.
        assert sorted((m["id"], m["prompt"]) for m in manifest) == [("cat-1", "a cat"),
                                                                    ("dog.2", "a dog")]
        again = _batch(src, out, emu.base_url, "-q")  # the id is the item: done, skipped
        assert again.returncode == 0, again.stderr
        assert len(emu.requests(method="POST")) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_refusing_every_connection_stops_the_batch_and_a_rerun_resumes(
    tmp_path: Path,
) -> None:
    src = tmp_path / "p.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(20)))
    out = tmp_path / "out"
    port = _free_port()  # nothing listens there: every connection is refused
    args = ["batch", str(src), "-o", str(out), "--base-url", f"http://127.0.0.1:{port}/v1",
            *DALLE, "--concurrency", "2", "--max-retries", "0", "-q"]
    run = _cli(*args, env=_env(OPENAI_API_KEY=KEY))
    assert run.returncode == EXIT_FATAL, run.stderr
    assert "the server is unreachable" in run.stderr
    assert "rerun" in run.stderr
    failed = (out / "manifest.jsonl").read_text().splitlines()
    assert UNREACHABLE_AFTER <= len(failed) <= UNREACHABLE_AFTER + 2  # not 20 failed lines
    with emulator_thread(api_key=KEY, port=port):
        again = _cli(*args, env=_env(OPENAI_API_KEY=KEY))
    assert again.returncode == 0, again.stderr
    saved = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len({m["id"] for m in saved if m["status"] == "ok"}) == 20


@pytest.mark.parametrize("command", ["generate", "edit", "variation"])
def test_single_commands_have_a_description_in_their_help(command: str) -> None:
    helped = _cli(command, "--help")
    head = " ".join(helped.stdout.split("positional arguments:")[0].split())
    assert "prints each file written" in head  # a description, under the usage
    assert "exit status: 0 all succeeded" in " ".join(helped.stdout.split())
