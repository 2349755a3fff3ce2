"""What a batch costs, before and after: ``--dry-run``, ``--max-cost``, ``--prices`` and the
cost on every manifest line, run as subprocesses against a server of the test's own that
answers with the usage the test chooses (and counts what it was asked for)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal

from asyncimg.cli import EXIT_BUDGET, EXIT_OK
from asyncimg.testing._png import b64_png

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
# gpt-image-1 at 1024x1024 low is documented as 272 output tokens an image: with this
# price each image is $0.30, estimated and actual alike (the prompt's text is free).
PER_TOKEN = 0.30 / 272 * 1_000_000
PRICES = {"gpt-image-1": {"text_input": 0.0, "image_output": PER_TOKEN}}
ARGS = ["--model", "gpt-image-1", "--size", "1024x1024", "--quality", "low",
        "--rate", "1000/s", "--concurrency", "1"]


class Billing:
    """The server's side: requests received and the output tokens it billed."""

    def __init__(self, output_tokens: int) -> None:
        self.output_tokens = output_tokens
        self.requests = 0
        self.billed_tokens = 0
        self.base_url = ""

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        n = int(body.get("n") or 1)
        out = self.output_tokens * n
        self.billed_tokens += out
        usage = {"input_tokens": 3, "output_tokens": out, "total_tokens": 3 + out,
                 "input_tokens_details": {"text_tokens": 3, "image_tokens": 0},
                 "output_tokens_details": {"image_tokens": out, "text_tokens": 0}}
        data = [{"b64_json": b64_png(8, 8, f"{body['prompt']}{i}")} for i in range(n)]
        return web.json_response({"created": 1, "data": data, "usage": usage,
                                  "output_format": "png", "size": "1024x1024",
                                  "quality": "low"})

    @property
    def spent(self) -> float:
        return self.billed_tokens * PER_TOKEN / 1_000_000


@contextlib.asynccontextmanager
async def _serve(billing: Billing) -> AsyncIterator[Billing]:
    app = web.Application()
    app.router.add_post("/v1/images/generations", billing.generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    billing.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield billing
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def server(output_tokens: int = 272) -> Iterator[Billing]:
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        _serve(Billing(output_tokens))
    ) as billing:
        yield billing


def _cli(billing: Billing, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    env["OPENAI_API_KEY"] = "sk-test"
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args, "--base-url", billing.base_url],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def _setup(tmp_path: Path, count: int) -> tuple[Path, Path, Path]:
    src = tmp_path / "p.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(count)))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    return src, prices, tmp_path / "out"


def _lines(out: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_dry_run_sends_nothing_and_prints_items_images_time_and_cost(tmp_path: Path) -> None:
    src, prices, out = _setup(tmp_path, 10)
    with server() as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS, "-n", "2",
                   "--prices", str(prices), "--dry-run")
        assert billing.requests == 0
    assert run.returncode == EXIT_OK, run.stderr
    assert "items to run: 10" in run.stdout
    assert "images: 20" in run.stdout
    assert "at the rate limit" in run.stdout
    assert "estimated cost: $6.00 (basis: 10 documented)" in run.stdout
    assert not (out / "manifest.jsonl").exists()


def test_dry_run_says_an_unknown_cost_and_the_batch_api_window(tmp_path: Path) -> None:
    src, _prices, out = _setup(tmp_path, 3)
    with server() as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), "--model", "dall-e-3",
                   "--dry-run", "--via", "batch-api")
        assert billing.requests == 0
    assert run.returncode == EXIT_OK, run.stderr
    assert "estimated cost: unknown (no prices for model dall-e-3)" in run.stdout
    assert "Batch API's window of 24 h" in run.stdout


def test_max_cost_stops_at_the_budget_and_a_larger_one_resumes(tmp_path: Path) -> None:
    src, prices, out = _setup(tmp_path, 10)
    with server() as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS,
                   "--prices", str(prices), "--max-cost", "1.00")
        assert run.returncode == EXIT_BUDGET, run.stderr
        assert billing.requests == 3
        assert billing.spent <= 1.00
        assert "budget of $1.00 is reached: $0.9000 spent" in run.stderr
        assert "rerun with a larger --max-cost to resume" in run.stderr
        lines = _lines(out)
        assert [line["cost_usd"] for line in lines] == [pytest.approx(0.30)] * 3

        # A larger budget counts what the directory spent, and goes on.
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS,
                   "--prices", str(prices), "--max-cost", "2.50")
        assert run.returncode == EXIT_BUDGET, run.stderr
        assert billing.requests == 8
        assert billing.spent <= 2.50
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS,
                   "--prices", str(prices), "--max-cost", "100")
        assert run.returncode == EXIT_OK, run.stderr
        assert billing.requests == 10
    assert "cost (USD)" in run.stdout
    assert "$0.6000" in run.stdout  # this run's two items
    assert sum(float(line["cost_usd"]) for line in _lines(out)) == pytest.approx(3.0)


def test_reservations_follow_what_requests_actually_cost(tmp_path: Path) -> None:
    # The server bills 1.5 times the documented tokens: $0.45 an image, estimated $0.30.
    src, prices, out = _setup(tmp_path, 10)
    with server(output_tokens=408) as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS,
                   "--prices", str(prices), "--max-cost", "1.00")
        assert run.returncode == EXIT_BUDGET, run.stderr
        # The first is reserved at $0.30 and costs $0.45; then $0.45 is reserved.
        assert billing.requests == 2
        assert billing.spent <= 1.00 + 0.15  # within one request's estimation error


def test_every_line_carries_its_cost_and_the_report_shows_the_spend(tmp_path: Path) -> None:
    src, prices, out = _setup(tmp_path, 4)
    with server() as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS, "--prices", str(prices),
                   "--report")
    assert run.returncode == EXIT_OK, run.stderr
    assert all(line["cost_usd"] == pytest.approx(0.30) for line in _lines(out))
    page = (out / "index.html").read_text()
    assert "$1.20" in page
    assert "spend-chart" in page


def test_a_bad_prices_file_is_a_usage_error(tmp_path: Path) -> None:
    src, prices, out = _setup(tmp_path, 2)
    prices.write_text('{"gpt-image-1": {"image_output": "a lot"}}')
    with server() as billing:
        run = _cli(billing, "batch", str(src), "-o", str(out), *ARGS, "--prices", str(prices))
        assert billing.requests == 0
    assert run.returncode == 2
    assert "--prices:" in run.stderr


def test_dry_run_learns_from_the_directorys_own_costs(tmp_path: Path) -> None:
    # gpt-image-2 publishes no tokens per size and quality: unknown until answers come.
    src, prices, out = _setup(tmp_path, 3)
    prices.write_text(json.dumps({"gpt-image-2": {"text_input": 0.0,
                                                  "image_output": PER_TOKEN}}))
    args = ["--model", "gpt-image-2", "--size", "1024x1024", "--quality", "low"]
    with server() as billing:
        before = _cli(billing, "batch", str(src), "-o", str(out), *args, "--prices",
                      str(prices), "--dry-run")
        assert "estimated cost: unknown (no published tokens for 1024x1024 low" in before.stdout
        run = _cli(billing, "batch", str(src), "-o", str(out), *args, "--prices", str(prices))
        assert run.returncode == EXIT_OK, run.stderr
        src.write_text("".join(f"prompt {i}\n" for i in range(8)))
        after = _cli(billing, "batch", str(src), "-o", str(out), *args, "--prices",
                     str(prices), "--dry-run")
        assert billing.requests == 3
    assert "items to run: 5 (3 already done)" in after.stdout
    assert "estimated cost: $1.50 (basis: 5 learned)" in after.stdout


def test_the_batch_api_route_prices_each_line_at_half(tmp_path: Path) -> None:
    from asyncimg import Usage, cost_of
    from asyncimg.testing import emulator_thread

    src, _prices, out = _setup(tmp_path, 4)
    with emulator_thread(api_key="sk-test") as emu:
        billing = Billing(0)
        billing.base_url = emu.base_url
        run = _cli(billing, "batch", str(src), "-o", str(out), "--via", "batch-api",
                   "--poll-interval", "0.01", "--model", "gpt-image-1", "--size", "1024x1024",
                   "--quality", "low", "--rate", "off")
        assert run.returncode == EXIT_OK, run.stderr
        status = _cli(billing, "batches", "status", str(out))
    lines = _lines(out)
    assert len(lines) == 4
    total = 0.0
    for line in lines:
        usage = Usage.from_json(line["usage"])  # type: ignore[arg-type]
        full = cost_of(usage, "gpt-image-1")
        assert full is not None
        assert line["cost_usd"] == pytest.approx(full / 2, abs=1e-8)
        total += full / 2
    assert f"spent: ${total:.4f} on the 4 results saved so far" in status.stdout
