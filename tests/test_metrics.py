"""The supervisor's GET /metrics, against real runtime processes (the fake runtime serving
llama-server's metric families): valid Prometheus text, one gauge per state, restarts that count
a kill -9, each runtime's own metrics passed through with runtime/role/model labels (one HELP and
TYPE per family however many runtimes have it), a slow backend shown as scrape_up 0 without
stalling the scrape, and the Host check that guards /health guarding /metrics too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import requests
import yaml
from checks import one_line_error
from conftest import fake_spec, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families


def metrics_spec(name: str, port: int, *flags: str, roles=("default",)) -> dict:
    spec = fake_spec(name, port, "--metrics", *flags)
    return spec | {"metrics": {"url": f"http://127.0.0.1:{port}/metrics"}, "roles": list(roles),
                   "models": ["gemma3-270m"], "variant": "cpu"}


def supervisor_url(farmhand) -> str:
    record = json.loads((farmhand.home / "state" / "supervisor.json").read_text())
    return f"http://127.0.0.1:{record['port']}"


def scrape(farmhand) -> tuple[str, dict[tuple[str, tuple], float], float]:
    t0 = time.monotonic()
    resp = requests.get(f"{supervisor_url(farmhand)}/metrics", timeout=10)
    seconds = time.monotonic() - t0
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain"), resp.text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(resp.text) for s in family.samples}
    return resp.text, samples, seconds


def value(samples, name: str, **labels) -> float | None:
    """The one sample of `name` whose labels include `labels` (None when there is none)."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def test_metrics_of_runtimes_and_their_backends(farmhand):
    fast, other, slow, plain = free_port(), free_port(), free_port(), free_port()
    farmhand.write_specs([metrics_spec("fast", fast), metrics_spec("other", other, roles=("code", "chat")),
                          metrics_spec("slow", slow, "--metrics-delay", "5"), fake_spec("plain", plain)])
    farmhand.run("up", check=True)
    try:
        text, samples, seconds = scrape(farmhand)
        # one gauge per state, 1 for the state it is in
        for rt in ("fast", "other", "slow", "plain"):
            assert value(samples, "farmhand_runtime_state", runtime=rt, state="ready") == 1, rt
            assert value(samples, "farmhand_runtime_state", runtime=rt, state="failed") == 0, rt
            assert value(samples, "farmhand_runtime_restarts_total", runtime=rt) == 0, rt
            assert value(samples, "farmhand_runtime_resident_memory_bytes", runtime=rt) > 1 << 20, rt
        assert value(samples, "farmhand_runtime_state", runtime="fast", state="ready", backend="fake",
                     variant="cpu") == 1
        # passed through, labelled, merged under one HELP/TYPE
        assert value(samples, "llamacpp:prompt_tokens_total", runtime="fast", role="default",
                     model="gemma3-270m") > 0
        assert value(samples, "llamacpp:requests_processing", runtime="other", role="code,chat") == 0
        assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1, text
        # the slow one: scrape_up 0, and the scrape did not wait for it
        assert value(samples, "farmhand_backend_scrape_up", runtime="fast") == 1
        assert value(samples, "farmhand_backend_scrape_up", runtime="slow") == 0
        assert value(samples, "llamacpp:prompt_tokens_total", runtime="slow") is None
        assert value(samples, "farmhand_backend_scrape_up", runtime="plain") is None  # has no metrics of its own
        assert seconds < 3, f"a scrape waited {seconds:.1f}s on a slow backend"

        # kill -9 of a runtime: the restart is counted once it is back
        health = requests.get(f"{supervisor_url(farmhand)}/health", timeout=5).json()
        pid = next(r["pid"] for r in health["runtimes"] if r["name"] == "fast")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: value(scrape(farmhand)[1], "farmhand_runtime_restarts_total", runtime="fast") == 1
                 and value(scrape(farmhand)[1], "farmhand_runtime_state", runtime="fast", state="ready") == 1,
                 30, "the restart of fast to show")
        # liveness probes are timed
        wait_for(lambda: (value(scrape(farmhand)[1], "farmhand_runtime_probe_seconds_count", runtime="plain") or 0) >= 1,
                 30, "a liveness probe to be observed")

        # the same Host rule as /health: a rebinding page cannot read it
        refused = requests.get(f"{supervisor_url(farmhand)}/metrics", headers={"Host": "evil.example"}, timeout=5)
        assert refused.status_code == 403
    finally:
        farmhand.run("down", check=True)


@pytest.mark.parametrize("args, expected", [
    (["--target", "127.0.0.1:11545", "--interval", "500ms"], {"scrape_interval": "500ms", "scrape_timeout": "500ms"}),
    (["--target", "127.0.0.1:11545", "--interval", "1m"], {"scrape_interval": "1m", "scrape_timeout": "5s"}),
    (["--target", "[::1]:11545", "--target", "node-2.lan:11545", "--job", "fleet"],
     {"job_name": "fleet", "static_configs": [{"targets": ["[::1]:11545", "node-2.lan:11545"]}]}),
], ids=["sub-second", "minute", "two-targets"])
def test_export_prometheus_writes_a_config_promtool_accepts(farmhand, tmp_path, args, expected):
    out = farmhand.run("export", "prometheus", *args, check=True).stdout
    (job,) = yaml.safe_load(out)["scrape_configs"]
    assert expected.items() <= job.items(), job
    if shutil.which("promtool"):
        (tmp_path / "p.yml").write_text(out)
        check = subprocess.run(["promtool", "check", "config", str(tmp_path / "p.yml")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("args, expected", [
    (["--target", "127.0.0.1"], "--target '127.0.0.1': expected HOST:PORT"),
    (["--target", "127.0.0.1:70000"], "--target '127.0.0.1:70000': expected HOST:PORT"),
    (["--target", "a:1", "--interval", "soon"], "--interval 'soon': expected a Prometheus duration"),
    (["--target", "a:1", "--interval", "0s"], "--interval '0s': must be more than 0"),
    (["--target", "a:1", "--job", "x y"], "--job 'x y': letters, digits, _ and - only"),
    ([], "no supervisor address known for this home: run `farmhand apply` first"),
], ids=["no-port", "port-range", "interval", "zero-interval", "job", "no-supervisor"])
def test_export_prometheus_bad_input_is_one_line(farmhand, args, expected):
    proc = farmhand.run("export", "prometheus", *args)
    assert proc.returncode == 2, proc.stderr
    assert expected in one_line_error(proc)


def test_a_backend_cannot_shadow_farmhands_own_series():
    from supervisor.metrics import relabel
    from supervisor.observed import RuntimeView

    view = RuntimeView("a", "fake", "cpu", "ready", 0, 1.0, 1.0, 1, (), ("default",), ("m",), "http://x/metrics", "")
    families: dict = {}
    relabel("# TYPE farmhand_runtime_state gauge\nfarmhand_runtime_state 1\n# TYPE ok_total counter\nok_total 2\n",
            view, families)
    assert list(families) == ["ok"]
    (sample,) = families["ok"].samples
    assert sample.labels == {"runtime": "a", "role": "default", "model": "m"} and sample.value == 2
