"""Publish → receipt latency through the Redis broker, against the relay and the same worker.

Starts a ``redis-server`` on a free port and two ``python -m minisoup pubsub_apps:room``
servers (2 workers each) attached to it. A client on server A, worker 1, publishes
``--count`` timestamped messages to the room; it receives its own (same worker), a
client on A's worker 2 receives them through the relay, one on server B through Redis.
Prints p50/p99/max per path in milliseconds (one machine: the figures include the
three processes sharing its cores). Usage: ``python3 tools/broker_latency.py [--count N]``.
"""

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from redisproc import REDIS_SERVER, RedisProcess  # noqa: E402
from serverproc import MinisoupProcess  # noqa: E402
from test_pubsub import close_all, join_on  # noqa: E402


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between messages")
    args = parser.parse_args()
    if REDIS_SERVER is None:
        sys.exit("redis-server is not installed")
    redis = RedisProcess().start()
    procs, clients = [], []
    try:
        for _ in range(2):
            proc = MinisoupProcess("pubsub_apps:room", workers=2, args=["--broker", redis.url],
                                   log_level="warning")
            procs.append(proc)
            proc.start()
            time.sleep(1.0)  # workers ready (no info lines at this log level)
        sender = join_on(procs[0].port, 1)
        receivers = {"same worker": sender, "relay (other worker)": join_on(procs[0].port, 2),
                     "redis (other server)": join_on(procs[1].port, 1)}
        clients = list(receivers.values())
        time.sleep(0.5)
        sent = {}
        got = {name: [] for name in receivers}

        def read(name, client):
            while True:
                try:
                    text = client.recv(timeout=5)[1]
                except Exception:
                    return
                now = time.perf_counter()
                if text.startswith("lat "):
                    seq = int(text.split()[1])
                    if seq in sent:
                        got[name].append(now - sent[seq])
                    if seq == args.count - 1:
                        return

        threads = [threading.Thread(target=read, args=item, daemon=True)
                   for item in receivers.items()]
        for thread in threads:
            thread.start()
        for seq in range(args.count):
            sent[seq] = time.perf_counter()
            sender.send_text("all lat %d" % seq)
            time.sleep(args.interval)
        for thread in threads:
            thread.join(10)
        for name, delays in got.items():
            if not delays:
                print("%-22s nothing received" % name)
                continue
            print("%-22s n=%d  p50 %.2f ms  p99 %.2f ms  max %.2f ms"
                  % (name, len(delays), 1000 * percentile(delays, 0.5),
                     1000 * percentile(delays, 0.99), 1000 * max(delays)))
    finally:
        close_all(clients)
        for proc in procs:
            proc.kill()
        redis.kill()


if __name__ == "__main__":
    main()
