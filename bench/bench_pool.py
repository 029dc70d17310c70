"""Benchmark of the azure_openai_pool provider: three deployments against the loopback emulator.

    python bench/bench_pool.py [--posts 20000]

Starts the emulator as its own process with ``--own-endpoints`` (each deployment on its own port),
three deployments at RPM 1,000 / TPM 150,000 each over 10 s windows, latency 400 ms +/- 30%, 1% HTTP
500 and 1% HTTP 503, and scores --posts generated sample posts (``social_enrich.demo``'s texts,
with the sentiment job's fields and inference settings) through the pool's ``score``, twice:

1. all three deployments up: posts/s against the bound, 429s, each deployment's share of posts;
2. the same, with one deployment killed (``POST /control/deployments/<name> {"mode": "refuse"}``)
   once half the posts are settled: posts/s after the kill against the bound of the two left, over
   the time after the kill; failed posts.

The bound is the sum over deployments of min(RPM/60 / requests per post, TPM/60 / charged tokens per
post), each from that deployment's own figures in the emulator's ``by_deployment`` (requests without
429s, which use no quota; the server's own charge, ``rate_limit_tokens``).

Goals (issue 13): at least 95% of the bound, 429s under 0.5% of requests, no failed post. It prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RPM, TPM, WINDOW = 1_000, 150_000, 10.0
API_KEY = "bench-key-not-secret"
DEPLOYMENTS = ("bench-mini-eastus", "bench-mini-westeu", "bench-mini-swedencentral")
KEYS = ("BENCH_KEY_EASTUS", "BENCH_KEY_WESTEU", "BENCH_KEY_SWEDEN")
FIGURES = ("requests", "throttled", "rate_limit_tokens", "posts_answered")


class Emulator:
    """The emulator in its own process, so its work does not share this process's GIL."""

    def __init__(self) -> None:
        flags = ["--rate-window-seconds", str(WINDOW), "--latency-seconds", "0.4", "--latency-jitter", "0.3",
                 "--share-http-500", "0.01", "--share-http-503", "0.01", "--seed", "1", "--api-key", API_KEY,
                 "--own-endpoints"]
        for name in DEPLOYMENTS:
            flags += ["--deployment", name, "--deployment-limit", f"{name}:{RPM}:{TPM}"]
        self.process = subprocess.Popen([sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", *flags],
                                        stdout=subprocess.PIPE, text=True)
        self.endpoint = (self.process.stdout.readline() if self.process.stdout else "").strip()
        if not self.endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start: {self.endpoint!r}")

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.endpoint}{path}", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def stats(self) -> dict:
        return self._call("/stats")

    def endpoints(self) -> dict[str, str]:
        return {d["deployment"]: d["endpoint"] for d in self._call("/control/deployments")["data"]}

    def set_mode(self, deployment: str, mode: str | None) -> None:
        self._call(f"/control/deployments/{deployment}", {"mode": mode})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def by_deployment(after: dict, before: dict) -> dict[str, dict]:
    """Each deployment's figures between two stats snapshots; its requests without 429s."""
    spent = {}
    for name in DEPLOYMENTS:
        a, b = after["by_deployment"][name], before["by_deployment"][name]
        figures = {k: a[k] - b[k] for k in FIGURES}
        figures["admitted"] = figures["requests"] - figures["throttled"]
        spent[name] = figures
    return spent


def bound(spent: dict[str, dict], names=DEPLOYMENTS) -> float:
    """Posts/s the quotas allow: per deployment min(RPM / requests per post, TPM / charged tokens per post)."""
    total = 0.0
    for name in names:
        d = spent[name]
        if d["posts_answered"] <= 0:
            continue
        total += min(RPM / 60 / (d["admitted"] / d["posts_answered"]), TPM / 60 / (d["rate_limit_tokens"] / d["posts_answered"]))
    return total


def sample_posts(count: int, job) -> list:
    """``count`` sample posts as the engine sends them: the job's include_fields of generated posts."""
    from social_enrich import demo
    from social_enrich.inference.provider import PostToScore

    fields = list(job.inference.include_fields or [job.inference.text_field])
    posts: list[PostToScore] = []
    for _, dim, _ in demo.generate_posts(posts=count, days=1, start=dt.date(2026, 11, 1), seed=7, update_share=0.0):
        columns = dim.to_pydict()
        for i, key in enumerate(columns["post_key"]):
            text = columns[job.inference.text_field][i]
            if not isinstance(text, str) or not text.strip():
                continue
            posts.append(PostToScore(key=key, fields={f: columns[f][i] for f in fields if f in columns}, text=text))
    seen: set = set()
    unique = [p for p in posts if not (p.key in seen or seen.add(p.key))]
    return unique[:count]


def pool_provider(job, endpoints: dict[str, str]):
    from social_enrich.inference.selection import build_provider

    config = {"deployments": [{"name": name, "endpoint": endpoints[name], "api_key_env_var": key,
                               "requests_per_minute": RPM, "tokens_per_minute": TPM}
                              for name, key in zip(DEPLOYMENTS, KEYS)]}
    return build_provider("azure_openai_pool", config, job)


def run(job, posts: list, emulator: Emulator, kill: str | None = None) -> dict:
    provider = pool_provider(job, emulator.endpoints())
    half = len(posts) // 2
    settled = [0]
    killed = threading.Event()
    at_kill: dict = {}

    def on_result(position: int, result) -> None:
        settled[0] += 1
        if kill and settled[0] == half:
            killed.set()

    def killer() -> None:
        if killed.wait(timeout=3600):
            at_kill.update(time=time.perf_counter(), stats=emulator.stats(), settled=settled[0])
            emulator.set_mode(kill, "refuse")

    thread = threading.Thread(target=killer, daemon=True)
    if kill:
        thread.start()
    before = emulator.stats()
    began = time.perf_counter()
    results = provider.score(posts, on_result)
    wall = time.perf_counter() - began
    after = emulator.stats()
    if kill:
        killed.set()
        thread.join(timeout=30)
        emulator.set_mode(kill, None)
    statuses = Counter(r.status for r in results)
    out = {"wall": wall, "posts": len(posts), "statuses": statuses, "spent": by_deployment(after, before),
           "usage": provider.usage, "peak": provider.peak_concurrency, "states": provider.deployment_states()}
    if at_kill:
        out["after_kill"] = {"seconds": began + wall - at_kill["time"], "posts": len(posts) - at_kill["settled"],
                             "spent": by_deployment(after, at_kill["stats"]),
                             "before_spent": by_deployment(at_kill["stats"], before),
                             "before_seconds": at_kill["time"] - began, "before_posts": at_kill["settled"]}
    return out


def describe(result: dict) -> list[str]:
    spent, posts = result["spent"], result["posts"]
    rate = posts / result["wall"]
    limit = bound(spent)
    requests = sum(d["requests"] for d in spent.values())
    throttled = sum(d["throttled"] for d in spent.values())
    answered = sum(d["posts_answered"] for d in spent.values()) or 1
    shares = ", ".join(f"{name} {100 * d['posts_answered'] / answered:.1f}%" for name, d in spent.items())
    charged = sum(d["rate_limit_tokens"] for d in spent.values()) / answered
    return [
        f"{posts:,} posts in {result['wall']:.1f} s = {rate:.1f} posts/s; bound {limit:.1f} posts/s -> "
        f"{100 * rate / limit:.1f}% of it (goal >= 95%)",
        f"requests {requests:,}, 429s {throttled} ({100 * throttled / max(requests, 1):.2f}%, goal < 0.5%), "
        f"retries {result['usage'].retries}; charged {charged:.1f} tokens/post; peak concurrency {result['peak']}",
        f"failed posts {posts - result['statuses'].get('ok', 0) - result['statuses'].get('filtered', 0)} (goal 0) "
        f"{dict(result['statuses'])}",
        f"share of posts: {shares}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20_000)
    args = parser.parse_args()

    for key in KEYS:
        os.environ[key] = API_KEY
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from social_enrich.config import load_job_config

    job = load_job_config(Path(__file__).resolve().parents[1] / "social_enrich" / "defs" / "sentiment" / "defs.yaml")
    job = job.model_copy(update={"inference": job.inference.model_copy(update={"cache": False})})
    posts = sample_posts(args.posts, job)
    emulator = Emulator()
    try:
        print(f"emulator {emulator.endpoint}: {len(DEPLOYMENTS)} deployments on their own endpoints, RPM {RPM:,} / "
              f"TPM {TPM:,} each over {WINDOW:g} s windows, 400 ms +/- 30%, 2% 5xx; {len(posts):,} posts, "
              f"posts_per_request {job.inference.posts_per_request}, workers <= {job.inference.workers} per deployment",
              flush=True)
        first = run(job, posts, emulator)
        time.sleep(WINDOW + 0.5)  # let the sliding windows empty, so the runs don't share quota
        second = run(job, posts, emulator, kill=DEPLOYMENTS[0])
    finally:
        emulator.stop()

    print()
    print(f"== bench_pool: {len(posts):,} posts, {os.cpu_count()} CPU(s) ==")
    print("run 1, all up   " + "\n                ".join(describe(first)))
    print("run 2, one down " + "\n                ".join(describe(second)))
    after = second.get("after_kill")
    if after:
        left = DEPLOYMENTS[1:]
        rate = after["posts"] / after["seconds"]
        limit = bound(after["spent"], left)
        before_rate = after["before_posts"] / after["before_seconds"]
        print(f"                killed {DEPLOYMENTS[0]} (refuse) at {after['before_seconds']:.1f} s, "
              f"{after['before_posts']:,} posts settled ({before_rate:.1f} posts/s before, bound of three "
              f"{bound(after['before_spent']):.1f})")
        print(f"                after the kill: {after['posts']:,} posts in {after['seconds']:.1f} s = {rate:.1f} posts/s; "
              f"bound of the two left {limit:.1f} posts/s (over the time after the kill) -> {100 * rate / limit:.1f}% of it")
        killed = after["spent"][DEPLOYMENTS[0]]
        print(f"                {DEPLOYMENTS[0]} after the kill: {killed['requests']} requests reached it, "
              f"{killed['posts_answered']} posts answered; breakers at the end {second['states']}")
    print(f"reproduce       python bench/bench_pool.py --posts {args.posts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
