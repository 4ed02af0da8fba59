"""The fetcher against a misbehaving loopback server: cuts at random offsets (resumed, next to
nothing fetched twice), no Range support (started over), wrong digests, truncated bodies,
404s, 500-then-success, a slow trickle (progress moves, then the stall is an error naming the
bytes that arrived), redirects, a proxy that counts what passes through, two pulls of one file
at once, and a fake Hugging Face endpoint (LFS digest, gated repos, missing files, offline)."""

from __future__ import annotations

import hashlib
import random
import sys
import threading
from pathlib import Path

import pytest

from supervisor import fetcher, sources
from supervisor.errors import VerificationFailed

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from fault_server import Behaviour, CountingProxy, FaultServer, HubRepo, payload  # noqa: E402

MB = 1 << 20
FAST = fetcher.Policy(retries=6, backoff_s=0.01, backoff_max_s=0.05, read_timeout_s=5, stall_s=5)


class Recorder:
    def __init__(self):
        self.lines: list[str] = []
        self.transfers: list[tuple[str, int, int | None]] = []

    def line(self, text):
        self.lines.append(text)

    def transfer(self, task, done, total, finished=False):
        self.transfers.append((task, done, total))

    def progress(self, *a, **k):
        pass


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


def get(url, dest, data=None, *, sha=True, policy=FAST, report=None, **expect):
    want = fetcher.Expect(size=expect.get("size", len(data) if data else None),
                          sha256=hashlib.sha256(data).hexdigest() if sha and data else expect.get("sha256"),
                          gguf=expect.get("gguf", False))
    return fetcher.download(url, dest, want, label="m", report=report or Recorder(), policy=policy)


def test_cuts_at_random_offsets_are_resumed_and_fetch_almost_nothing_twice(server, tmp_path):
    data = payload(24 * MB)
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(data) - 1), 4))
    server.serve("/m.gguf", Behaviour(data=data, cuts=cuts))
    result = get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert result.sha256 == hashlib.sha256(data).hexdigest() and (tmp_path / "m.gguf").read_bytes() == data
    assert result.attempts == 5 and server.count("/m.gguf") == 5
    ranges = [r["range"] for r in server.requests]
    assert ranges[0] is None and all(r.startswith("bytes=") for r in ranges[1:])
    assert server.bytes_sent("/m.gguf") - len(data) <= 1 * MB  # what a cut lost in flight, at most a chunk
    assert not (tmp_path / "m.gguf.partial").exists()


def test_a_run_killed_half_way_is_resumed_by_the_next_run(server, tmp_path):
    data = payload(8 * MB)
    (tmp_path / "m.gguf.partial").write_bytes(data[: 3 * MB])  # what an interrupted run left
    server.serve("/m.gguf", Behaviour(data=data))
    result = get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert result.resumed_from == 3 * MB and result.transferred == 5 * MB
    assert server.requests[0]["range"] == f"bytes={3 * MB}-" and result.sha256 == hashlib.sha256(data).hexdigest()


def test_a_server_without_range_support_starts_over(server, tmp_path):
    data = payload(6 * MB)
    (tmp_path / "m.gguf.partial").write_bytes(data[: 2 * MB])
    server.serve("/m.gguf", Behaviour(data=data, ranges=False, cuts=[4 * MB]))
    result = get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert (tmp_path / "m.gguf").read_bytes() == data and result.resumed_from == 2 * MB
    assert server.bytes_sent("/m.gguf") >= len(data) + 3 * MB  # the whole file, after the cut as well


def test_a_wrong_digest_removes_the_partial_and_names_both(server, tmp_path):
    data = payload(2 * MB)
    server.serve("/m.gguf", Behaviour(data=data))
    with pytest.raises(VerificationFailed) as bad:
        get(server.url("/m.gguf"), tmp_path / "m.gguf", data, sha=False, sha256="0" * 64)
    assert f"expected {'0' * 64}, got {hashlib.sha256(data).hexdigest()}" in str(bad.value)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.partial").exists()


@pytest.mark.parametrize("head, message", [(b"GGML\x03\x00\x00\x00", "not a GGUF file"),
                                           (b"GGUF\x09\x00\x00\x00", "unsupported GGUF version 9")])
def test_gguf_magic_and_version_are_checked(server, tmp_path, head, message):
    data = head + bytes(4096)
    server.serve("/m.gguf", Behaviour(data=data))
    with pytest.raises(VerificationFailed, match=message):
        get(server.url("/m.gguf"), tmp_path / "m.gguf", data, gguf=True)


def test_a_body_shorter_than_announced_is_resumed(server, tmp_path):
    data = payload(3 * MB)
    server.serve("/m.gguf", Behaviour(data=data, cuts=[MB], short_by=0))
    result = get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert result.attempts == 2 and (tmp_path / "m.gguf").read_bytes() == data


def test_a_server_that_always_truncates_is_an_error_that_says_how_far_it_got(server, tmp_path):
    data = payload(2 * MB)
    server.serve("/m.gguf", Behaviour(data=data, cuts=[MB + 10] * 20, ranges=False))
    report = Recorder()
    with pytest.raises(fetcher.FetchFailed) as failed:
        get(server.url("/m.gguf"), tmp_path / "m.gguf", data, report=report,
            policy=fetcher.Policy(retries=2, backoff_s=0.01, read_timeout_s=5))
    text = str(failed.value)
    assert "(3 attempts)" in text and f"of {2 * MB} bytes arrived and are kept in" in text
    assert "a re-run resumes from there" in text and (tmp_path / "m.gguf.partial").exists()
    assert sum("retrying" in line for line in report.lines) == 2


@pytest.mark.parametrize("status", [404, 403, 401])
def test_not_found_and_forbidden_are_not_retried(server, tmp_path, status):
    server.serve("/m.gguf", Behaviour(statuses=[status]))
    with pytest.raises(fetcher.FetchFailed, match=f"HTTP {status}"):
        get(server.url("/m.gguf"), tmp_path / "m.gguf", b"x")
    assert server.count("/m.gguf") == 1


def test_500_then_success_is_retried(server, tmp_path):
    data = payload(MB)
    server.serve("/m.gguf", Behaviour(data=data, statuses=[500, 503]))
    result = get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert result.attempts == 3 and server.count("/m.gguf") == 3


def test_a_trickle_shows_progress_then_stalls_with_what_arrived(server, tmp_path):
    data = payload(4 * MB)
    server.serve("/m.gguf", Behaviour(data=data, trickle_s=0.01))  # ~100 KB/s
    report = Recorder()
    slow = fetcher.Policy(retries=1, backoff_s=0.01, stall_s=1.0, min_rate=1 * MB, read_timeout_s=5)
    with pytest.raises(fetcher.FetchFailed) as failed:
        get(server.url("/m.gguf"), tmp_path / "m.gguf", data, report=report, policy=slow)
    done = [d for _, d, _ in report.transfers]
    assert len(done) >= 3 and done == sorted(done) and done[-1] > 0  # progress moved
    assert "stalled:" in str(failed.value) and "bytes arrived and are kept" in str(failed.value)


def test_a_server_that_sends_nothing_is_a_read_timeout(server, tmp_path):
    data = payload(MB)
    server.serve("/m.gguf", Behaviour(data=data, trickle_s=3))  # the first KB, then silence
    policy = fetcher.Policy(retries=0, read_timeout_s=0.5, stall_s=60)
    with pytest.raises(fetcher.FetchFailed, match="timed out"):
        get(server.url("/m.gguf"), tmp_path / "m.gguf", data, policy=policy)


def test_a_redirect_is_followed(server, tmp_path):
    data = payload(MB)
    server.serve("/real.gguf", Behaviour(data=data))
    server.serve("/m.gguf", Behaviour(redirect=server.url("/real.gguf")))
    get(server.url("/m.gguf"), tmp_path / "m.gguf", data)
    assert (tmp_path / "m.gguf").read_bytes() == data


def test_http_proxy_is_honoured_and_named(server, tmp_path, monkeypatch):
    data = payload(MB)
    url = server.serve("/m.gguf", Behaviour(data=data))
    with CountingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.delenv("no_proxy", raising=False)
        assert sources.via("http://mirror.example/m.gguf") == f"proxy {proxy.url}"
        get(url, tmp_path / "m.gguf", data)
        assert proxy.requests == [url]
    assert (tmp_path / "m.gguf").read_bytes() == data


def test_two_pulls_of_one_file_at_once_download_it_once(server, tmp_path):
    data = payload(16 * MB)
    url = server.serve("/m.gguf", Behaviour(data=data, trickle_s=None))
    results, errors = [], []

    def pull():
        try:
            results.append(get(url, tmp_path / "m.gguf", data))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2
    assert server.count("/m.gguf") == 1 and server.bytes_sent("/m.gguf") == len(data)
    assert {r.sha256 for r in results} == {hashlib.sha256(data).hexdigest()}
    assert sorted(r.transferred for r in results) == [0, len(data)]


def test_free_disk_is_checked_first(tmp_path, monkeypatch):
    import shutil as shutil_

    from supervisor import store
    from supervisor.deployment import ModelSpec
    from supervisor.errors import EnvironmentProblem

    monkeypatch.setattr(shutil_, "disk_usage", lambda p: shutil_._ntuple_diskusage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    model = ModelSpec(name="big", size_bytes=2 * 10**9, sources=("https://example.org/big.gguf",), sha256="0" * 64)
    with pytest.raises(EnvironmentProblem) as full:
        store.fetch(model, tmp_path / "models", Recorder())
    assert str(full.value) == (f"big needs 2.0 GB, {tmp_path / 'models'} has 0.0 GB free: not enough space left on "
                               "device")


# --- Hugging Face --------------------------------------------------------------------------------

@pytest.fixture
def hub(server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "FARMHAND_MIRROR_HF"):
        monkeypatch.delenv(var, raising=False)
    sources.configure(sources.Mirrors.resolve())
    return server


def hf_get(uri: str, dest: Path, size: int, sha256: str | None = None):
    return sources.get(uri).fetch(uri, dest, fetcher.Expect(size=size, sha256=sha256, gguf=True), label="m",
                                  report=Recorder())


def test_hf_file_is_verified_against_the_hubs_digest_and_the_token_stays_on_the_hub(hub, tmp_path, monkeypatch):
    data = payload(3 * MB)
    hub.repos["acme/models"] = HubRepo(files={"tiny.gguf": data})
    monkeypatch.setenv("HF_TOKEN", "hf_public")
    result = hf_get("hf://acme/models/tiny.gguf@main", tmp_path / "tiny.gguf", len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    resolve = [r for r in hub.requests if "/resolve/" in r["path"]]
    cdn = [r for r in hub.requests if r["path"].startswith("/cdn/")]
    assert resolve and resolve[0]["path"] == "/acme/models/resolve/main/tiny.gguf"
    assert resolve[0]["authorization"] == "Bearer hf_public"  # the Hub sees the token
    assert cdn and all(r["authorization"] is None for r in cdn) and cdn[0]["host"].startswith("localhost")


def test_hf_digest_the_hub_disagrees_with_is_refused(hub, tmp_path):
    data = payload(MB)
    hub.repos["acme/models"] = HubRepo(files={"tiny.gguf": data})
    with pytest.raises(sources.SourceFailed, match="the profile pins " + "1" * 64):
        hf_get("hf://acme/models/tiny.gguf", tmp_path / "tiny.gguf", len(data), sha256="1" * 64)


@pytest.mark.parametrize("token, says", [(None, "gated repo"), ("hf_wrong", "gated repo")])
def test_a_gated_repo_says_to_accept_the_licence_and_set_hf_token(hub, tmp_path, monkeypatch, token, says):
    hub.repos["meta/llama"] = HubRepo(files={"m.gguf": payload(MB)}, gated_token="hf_granted")
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(sources.SourceFailed) as failed:
        hf_get("hf://meta/llama/m.gguf", tmp_path / "m.gguf", MB)
    assert str(failed.value) == (f"meta/llama is a gated repo: accept its licence on http://127.0.0.1:{hub.port}/"
                                 "meta/llama and set HF_TOKEN to a token of that account")
    status = 401 if token is None else 403
    assert any(r["path"].endswith("/resolve/main/m.gguf") for r in hub.requests) and status in (401, 403)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert hf_get("hf://meta/llama/m.gguf", tmp_path / "m.gguf", MB).size == MB


def test_hf_missing_repo_and_file_and_offline(hub, tmp_path, monkeypatch):
    hub.repos["acme/models"] = HubRepo(files={"tiny.gguf": payload(MB)})
    with pytest.raises(sources.SourceFailed, match="no repo acme/nothing on"):
        hf_get("hf://acme/nothing/x.gguf", tmp_path / "x.gguf", MB)
    with pytest.raises(sources.SourceFailed, match="acme/models@main has no file x.gguf"):
        hf_get("hf://acme/models/x.gguf", tmp_path / "x.gguf", MB)
    ok, why = sources.get("hf://acme/models/tiny.gguf").reachable("hf://acme/models/tiny.gguf")
    assert ok and why == "hf: reachable"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    assert sources.get("hf://acme/models/tiny.gguf").reachable("hf://acme/models/tiny.gguf") == (
        False, "hf: offline (HF_HUB_OFFLINE is set)")
    assert len(hub.requests) == before  # offline means no request at all


def test_an_https_mirror_rewrites_the_url_and_plan_says_so(monkeypatch):
    monkeypatch.setenv("FARMHAND_MIRROR_HTTPS", "http://127.0.0.1:9/files")
    sources.configure(sources.Mirrors.resolve())
    try:
        src = sources.get("https://example.org/a/b.gguf")
        assert src.url("https://example.org/a/b.gguf") == "http://127.0.0.1:9/files/example.org/a/b.gguf"
        assert src.describe("https://example.org/a/b.gguf") == (
            "https://example.org/a/b.gguf via mirror http://127.0.0.1:9/files/example.org/a/b.gguf (direct)")
    finally:
        monkeypatch.delenv("FARMHAND_MIRROR_HTTPS")
        sources.configure(sources.Mirrors.resolve())


@pytest.mark.parametrize("uri, sha, says", [
    ("https://example.org/m.gguf", None, "a download needs a sha256"),
    ("http://example.org/m.gguf", "0" * 64, "plain http only from this machine or a named mirror"),
])
def test_downloads_need_a_digest_and_https(uri, sha, says):
    from supervisor.errors import BadInput

    with pytest.raises(BadInput, match=says):
        sources.check_uri(uri, bool(sha), "models.m.sources")
    sources.check_uri("http://127.0.0.1:9/m.gguf", True, "models.m.sources")  # loopback is fine
