"""Run the shop end to end: `python -m examples.shop.run --orders 200 [--kill-payments]`.

Starts `nats-server -js` and `redis-server` on free loopback ports in a temporary directory (or
uses `--nats URL --redis URL`), the services as `catga worker` processes (`orders`,
`notifications`, and two `payments` instances sharing one durable consumer), places the orders
from a client mediator, waits until every order was notified, prints how many times each was
(exactly once is the point), and stops everything. `--kill-payments` kills one payments instance
with SIGKILL halfway: the other takes its unacknowledged orders over.

`tests/test_shop_example.py` runs the same `Shop` with 1,000 orders and the kill.
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.shop._stores import NOTIFIED_KEY
from examples.shop.messages import Checkout, PlaceOrder

import catga

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("orders", "payments", "payments", "notifications")  # two payments instances


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"needs `{name}`: apt-get install {name} (or pass --nats/--redis URLs)")


def _wait_for_port(port: int, process: "subprocess.Popen[bytes]", what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


class Shop:
    """The servers (when it starts them), the service processes, and a client mediator."""

    def __init__(self, directory: Path, nats_url: str | None = None, redis_url: str | None = None) -> None:
        self.directory = directory
        self.servers: list[subprocess.Popen[bytes]] = []
        self.services: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.logs: list[Any] = []
        self.nats_url = nats_url or self._spawn_nats()
        self.redis_url = redis_url or self._spawn_redis()

    def _spawn_nats(self) -> str:
        port = _free_port()
        argv = [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.directory / "js")]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(process)
        _wait_for_port(port, process, "nats-server")
        return f"nats://127.0.0.1:{port}"

    def _spawn_redis(self) -> str:
        port = _free_port()
        argv = [_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.directory)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(process)
        _wait_for_port(port, process, "redis-server")
        return f"redis://127.0.0.1:{port}/0"

    def start_services(self) -> None:
        """Start every service and wait until each says it serves."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for service in SERVICES:
            argv = [sys.executable, "-m", "catga", "worker", f"examples.shop.{service}:mediator"]
            argv += ["--nats", self.nats_url, "--redis", self.redis_url, "--events", "jetstream", "--service", service]
            # An order held by a killed instance comes back after 3 s; its claim's lease (5 s,
            # `_stores.CLAIM_TTL`) runs out before the redeliveries do.
            argv += ["--ack-wait", "3"]
            log = open(self.directory / f"{service}-{len(self.services.get(service, []))}.log", "wb")  # noqa: SIM115
            self.logs.append(log)  # closed by `stop()`, once the process is gone
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            self.services.setdefault(service, []).append(process)
            self._wait_serving(process, Path(log.name))

    def _wait_serving(self, process: "subprocess.Popen[bytes]", log: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"a service exited with status {process.returncode}:\n{log.read_text()}")
            if b"catga worker: serving" in log.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError(f"a service did not start within {timeout} s:\n{log.read_text()}")

    def kill_one_payments(self) -> None:
        self.services["payments"][0].send_signal(signal.SIGKILL)

    async def place_orders(self, count: int, *, kill_after: int | None = None, concurrency: int = 32) -> list[str]:
        """Place `count` orders through the `orders` service; with `kill_after`, kill a payments
        instance once that many were placed."""
        from catga.nats import NatsTransport

        client = catga.Mediator(transport=NatsTransport(self.nats_url, service="shop-client"))
        limit = asyncio.Semaphore(concurrency)
        placed: list[str] = []

        async def place(number: int) -> None:
            async with limit:
                order_id = await client.send(PlaceOrder(order_id=f"o-{number}", customer=f"c-{number % 17}", amount=1))
                placed.append(order_id)
                if kill_after is not None and len(placed) == kill_after:
                    self.kill_one_payments()

        async with client:
            await asyncio.gather(*(place(number) for number in range(count)))
        return placed

    async def checkout(self, order_id: str, sku: str, amount: int) -> str:
        """Run the checkout saga in `orders` for one order: its final status (`completed`, ...)."""
        from catga.nats import NatsTransport

        client = catga.Mediator(transport=NatsTransport(self.nats_url, service="shop-client"))
        async with client:
            status: str = await client.send(Checkout(order_id=order_id, customer="ada", sku=sku, amount=amount))
            return status

    async def notified(self, order_ids: Sequence[str], timeout: float = 60.0) -> dict[str, int]:
        """How many times each order was notified, once every order was (or the timeout passed)."""
        import redis.asyncio

        client = redis.asyncio.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                counts = {key.decode(): int(value) for key, value in (await client.hgetall(NOTIFIED_KEY)).items()}
                if all(order_id in counts for order_id in order_ids) or time.monotonic() > deadline:
                    await asyncio.sleep(0.5)  # late duplicates, if any, show up too
                    return {key.decode(): int(value) for key, value in (await client.hgetall(NOTIFIED_KEY)).items()}
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    def stop(self) -> dict[str, list[int | None]]:
        """SIGTERM every service (they drain and exit 0), then the servers; the exit statuses."""
        statuses: dict[str, list[int | None]] = {}
        for service, processes in self.services.items():
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                statuses.setdefault(service, []).append(process.returncode)
        for server in self.servers:
            server.terminate()
            server.wait(10)
        for log in self.logs:
            log.close()
        return statuses


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="catga-shop-") as directory:
        shop = Shop(Path(directory), args.nats, args.redis)
        try:
            shop.start_services()
            started = time.perf_counter()
            kill_after = args.orders // 2 if args.kill_payments else None
            placed = await shop.place_orders(args.orders, kill_after=kill_after)
            counts = await shop.notified(placed)
            elapsed = time.perf_counter() - started
        finally:
            statuses = shop.stop()
        once = sum(1 for order_id in placed if counts.get(order_id) == 1)
        print(f"placed {len(placed)} orders in {elapsed:.1f} s; notified exactly once: {once}")
        missing = [order_id for order_id in placed if order_id not in counts]
        twice = [order_id for order_id, count in counts.items() if count > 1]
        print(f"never notified: {len(missing)}; notified more than once: {len(twice)}; exit statuses: {statuses}")
        return 0 if once == len(placed) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.shop.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=200, help="how many orders to place (default 200)")
    parser.add_argument("--kill-payments", action="store_true", help="SIGKILL one payments instance halfway")
    parser.add_argument("--nats", help="use this NATS server instead of starting one")
    parser.add_argument("--redis", help="use this Redis server instead of starting one")
    args: Any = parser.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
