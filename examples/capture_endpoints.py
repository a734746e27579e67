"""Write the docs' endpoint examples: run every endpoint against a real server and record what it answered.

    python examples/capture_endpoints.py                                # the page in docs/api/examples.md
    python examples/capture_endpoints.py --store ./models --model bbc   # a trained model, elsewhere

Without ``--store`` the server serves a stand-in of the demo model that this script builds the same way on
every machine: a small ``TransformerClassifier`` with the BBC News labels, seeded, trained for a moment on
a few fixed sentences, with a tokenizer trained on the same sentences. Its answers are therefore the same
on every run, and ``tests/test_docs.py`` fails when a fresh capture differs from the committed page in
anything but volatile values (times, pids, memory, keys).

The server binds free ports; the page shows the default ports 8080/8081/8082. Token authorization is on,
as by default: the script reads the keys from the server's key file, and the curl lines read them with
``torchship key``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from torchship.serving import ModelSettings, Server, ServerSettings, ServerThread

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api" / "examples.md"
DEFAULT_PORTS = {"inference": "8080", "management": "8081", "metrics": "8082"}
SHOWN_KEY = {kind: f'-H "Authorization: Bearer $(torchship key {kind})"' for kind in ("management", "API")}
TEXT = "Shares in the bank rose sharply after record profits."
SPORTS_TEXT = "The striker scored twice in the final."

# The stand-in's training set: a few sentences per BBC News label, so that the examples classify the two
# texts above as a trained model would.
LESSONS = {
    "business": [
        "Shares rose after the bank reported record profits.",
        "The company said its sales and profits fell this year.",
        "Oil prices and the markets rose as investors bought shares.",
    ],
    "entertainment": [
        "The film won the award for best actor at the festival.",
        "The singer released a new album and the band will tour.",
        "The television show drew millions of viewers to the series.",
    ],
    "politics": [
        "The minister told parliament the government will cut taxes.",
        "Labour and the Tories clashed over the election campaign.",
        "The prime minister faced questions from MPs on the bill.",
    ],
    "sports": [
        "The striker scored twice as the team won the cup final.",
        "The coach said the players must win the next match.",
        "England beat Wales in the rugby championship game.",
    ],
    "tech": [
        "The new phone runs software that users can download online.",
        "Hackers attacked the computer network of the internet firm.",
        "The games console and its chips were shown at the show.",
    ],
}


def make_stand_in(store: Path, name: str, versions: int = 2) -> None:
    """Publish ``versions`` identical versions of the deterministic stand-in model into ``store``."""
    import torch
    import torch.nn.functional as F

    from torchship.data.tokenizer import encode_texts, pad_token_id, train_tokenizer
    from torchship.models import TransformerClassifier, TransformerConfig
    from torchship.store import ModelStore, PackageConfig, write_package

    labels = tuple(LESSONS)
    texts = [text for label in labels for text in LESSONS[label]]
    targets = torch.tensor([labels.index(label) for label in labels for _ in LESSONS[label]])
    tokenizer = train_tokenizer(texts, vocab_size=400, max_length=64)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=len(labels),
        d_model=32,
        n_heads=2,
        n_layers=1,
        d_ff=64,
        dropout=0.0,
        max_length=64,
    )
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same sums in the same order, whatever the machine's cores
    model = TransformerClassifier(config)
    input_ids, attention_mask = encode_texts(tokenizer, texts, pad_token_id(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):  # full-batch steps: a clear answer for the example texts, in a second
        optimizer.zero_grad()
        F.cross_entropy(model(input_ids, attention_mask), targets).backward()
        optimizer.step()
    package = PackageConfig(
        name=name,
        version=1,
        labels=labels,
        model=config,
        max_length=64,
        training={"note": "a stand-in for the endpoint examples: 15 sentences, 60 steps"},
    )
    for _ in range(versions):
        ModelStore(store).publish(
            name,
            lambda directory: write_package(
                directory, config=package, state_dict=model.state_dict(), tokenizer=tokenizer
            ),
        )


class Capture:
    def __init__(self, server: Server, key_file: Path) -> None:
        self.server = server
        self.key_file = key_file
        self.parts: list[str] = []

    def key(self, kind: str) -> str:
        """A key as a client reads it from the key file (the token API may have replaced it)."""
        return str(json.loads(self.key_file.read_text(encoding="utf-8"))[kind]["key"])

    def section(self, title: str, text: str = "") -> None:
        self.parts.append(f"\n## {title}\n\n" + (f"{text}\n\n" if text else ""))

    def call(
        self,
        listener: str,
        method: str,
        path: str,
        note: str = "",
        *,
        json_body: Any = None,
        text: str | None = None,
        limit: int | None = None,
        shown_data: str | None = None,
        key: str | None = "",
    ) -> httpx.Response:
        """``key``: which key to send (default: the management key on the management listener; None: none)."""
        url = self.server.urls[listener] + path
        headers, content = {}, None
        if json_body is not None:
            headers, content = {"content-type": "application/json"}, json.dumps(json_body)
        elif text is not None:
            headers, content = {"content-type": "text/plain"}, text
        key = ("management" if listener == "management" else None) if key == "" else key
        if key is not None:
            headers["authorization"] = f"Bearer {self.key(key)}"
        response = httpx.request(method, url, headers=headers, content=content, timeout=120)
        shown_url = f"http://127.0.0.1:{DEFAULT_PORTS[listener]}{path}"
        parts = [f"curl -X {method} '{shown_url}'" if method != "GET" else f"curl '{shown_url}'"]
        if key is not None:
            parts.append(SHOWN_KEY[key])
        if shown_data is not None:  # a body too big to print
            parts += ["-H 'Content-Type: application/json'", f"--data-binary {shown_data}"]
        elif json_body is not None:
            parts += ["-H 'Content-Type: application/json'", f"-d '{json.dumps(json_body)}'"]
        elif text is not None:
            parts += ["-H 'Content-Type: text/plain'", f"-d '{text}'"]
        curl = _command(parts)
        body = response.text.strip()
        if response.headers.get("content-type", "").startswith("application/json"):
            body = _pretty(response.json())
        if limit is not None:
            body = "\n".join(_metrics_excerpt(body, limit)) + "\n..."
        if path.startswith("/token"):  # a new key: not worth printing, nor valid anywhere
            body = re.sub(r'"key": "[^"]+"', '"key": "<the new key>"', body)
        shown = ("retry-after", "allow", "www-authenticate")
        extra = "".join(f"\n{k}: {v}" for k, v in response.headers.items() if k in shown)
        self.parts.append(
            (f"{note}\n\n" if note else "")
            + f"```bash\n{curl}\n```\n\n```\nHTTP {response.status_code}{extra}\n{body}\n```\n\n"
        )
        return response


def _command(parts: list[str]) -> str:
    """A shell command on one line, or one part per line when that is too wide to read without scrolling."""
    line = " ".join(parts)
    return line if len(line) <= 80 else " \\\n     ".join(parts)


def _pretty(data: Any) -> str:
    """Indented JSON with short lists of numbers or strings kept on one line."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text)


def _metrics_excerpt(text: str, limit: int) -> list[str]:
    wanted = (
        "torchship_requests_total",
        "torchship_batch_size_bucket",
        "torchship_queue_wait_seconds_count",
        "torchship_inference_seconds_sum",
        "torchship_request_duration_seconds_count",
        "torchship_queue_depth",
        "torchship_workers",
    )
    lines = [line for line in text.splitlines() if line.startswith(wanted) and 'model="bbc"' in line]
    return lines[:limit]


def capture(server: Server, name: str, store: Path, key_file: Path) -> str:
    c = Capture(server, key_file)
    c.parts.append(
        "# Endpoint examples\n\n"
        "Every request on this page was sent to a running server, and every answer is the one it gave: "
        "`python examples/capture_endpoints.py` writes the page, and `tests/test_docs.py` fails when a fresh "
        "capture differs from it in anything but times, process ids, memory and keys. The model is a "
        "stand-in that the script builds the same way on every machine (the BBC News labels, a small "
        "seeded `TransformerClassifier` trained for a moment on fifteen sentences), so a trained model "
        "answers with other probabilities. The ports are the defaults: inference 8080, management 8081, "
        "metrics 8082, all on 127.0.0.1. [The APIs](index.md) says what each route is for.\n\n"
        "Token authorization is on, as by default: the management API needs the management key, which "
        "the server writes to `key_file.json` (owner-only) at start and `torchship key management` prints; "
        "the inference API needs the inference key too once a listener binds a non-loopback address "
        "([Security](../security.md#keys)).\n"
    )
    c.section("Inference API (port 8080)")
    c.call("inference", "GET", "/ping", "Health: `Healthy`, `Partial Healthy` or `Unhealthy` (500).")
    c.call("inference", "POST", f"/predictions/{name}", "Classify one text (JSON).", json_body={"text": TEXT})
    c.call("inference", "POST", f"/predictions/{name}", "The text itself as `text/plain`.", text=TEXT)
    c.call(
        "inference",
        "POST",
        f"/predictions/{name}/1",
        "One version, only the `top_k` labels.",
        json_body={"text": TEXT, "top_k": 2},
    )
    c.section("Open Inference Protocol v2 (port 8080)")
    c.call("inference", "GET", "/v2/health/live")
    c.call("inference", "GET", "/v2/health/ready")
    c.call("inference", "GET", "/v2")
    c.call("inference", "GET", f"/v2/models/{name}")
    c.call("inference", "GET", f"/v2/models/{name}/versions/1/ready")
    request = {
        "id": "42",
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [2],
                "data": [TEXT, SPORTS_TEXT],
            }
        ],
    }
    c.call(
        "inference",
        "POST",
        f"/v2/models/{name}/infer",
        "Several texts: each is batched as a request.",
        json_body=request,
    )
    c.call(
        "inference",
        "POST",
        f"/v2/models/{name}/infer",
        "Triton's classification extension: the top classes of an output as `score:index:label`.",
        json_body={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}],
            "outputs": [{"name": "probabilities", "parameters": {"class_count": 2}}],
        },
    )
    c.call("inference", "GET", f"/v2/models/{name}/config", "Model configuration (Triton's extension).")
    c.call("inference", "GET", f"/v2/models/{name}/versions/1/stats", "Statistics (Triton's extension).")
    c.call(
        "inference",
        "POST",
        "/v2/repository/index",
        "The repository index: every version and its state.",
        json_body={},
    )
    c.section("KServe v1 (port 8080)")
    c.call("inference", "GET", "/", "Liveness.")
    c.call("inference", "GET", "/v1/models")
    c.call("inference", "GET", f"/v1/models/{name}", "Readiness (503 while no worker has loaded the model).")
    c.call(
        "inference",
        "POST",
        f"/v1/models/{name}:predict",
        'Each instance is batched as a request; a string or a `{"text": ...}` object.',
        json_body={"instances": [TEXT, {"text": SPORTS_TEXT, "top_k": 1}]},
    )
    c.section("Management API (port 8081)")
    c.call("management", "GET", "/models", "List models (`limit`, `next_page_token`).")
    c.call("management", "GET", f"/models/{name}", "Describe the default version.")
    c.call("management", "GET", f"/models/{name}/1", "Describe one version.")
    c.call("management", "GET", f"/models/{name}/all", "Describe every version.")
    c.call(
        "management",
        "POST",
        f"/models?url={name}/1&model_name={name}-copy&initial_workers=1&synchronous=true",
        "Register a model from the store (`name` or `name/version`), a package directory or a `.zip` in "
        "the store or a `--model_roots` directory. Parameters: `url`, `model_name`, `batch_size`, "
        "`max_batch_delay` (ms), `initial_workers`, `synchronous`, `response_timeout` (s), "
        "`startup_timeout` (s), `job_queue_size`; or the same as a JSON body.",
    )
    c.call(
        "management",
        "POST",
        f"/models?url={name}/2&model_name={name}-async&initial_workers=1",
        "Without `synchronous=true` the answer comes at once, while the workers load: 202.",
    )
    c.call("management", "GET", "/models?limit=1&next_page_token=0", "A page of one model, and the next.")
    c.call("management", "GET", "/models?limit=1&next_page_token=1")
    # Scaling up answers at once (202) and scaling down waits for nothing, so no worker start is waited for.
    c.call(
        "management",
        "PUT",
        f"/models/{name}-copy?min_worker=2",
        "Scale the default version's workers. Without `synchronous=true` the answer comes at once: 202.",
    )
    c.call(
        "management",
        "PUT",
        f"/models/{name}-copy/1?min_worker=1&synchronous=true",
        "Scale one version, and answer once it is done.",
    )
    c.call("management", "PUT", f"/models/{name}/1/set-default", "Set the default version.")
    c.call(
        "management", "DELETE", f"/models/{name}-copy/1", "Unregister a version (in-flight requests finish)."
    )
    c.call("management", "DELETE", f"/models/{name}-async", "Unregister a whole model, every version.")
    c.call("management", "PUT", f"/models/{name}/2/set-default")
    c.section("Token authorization (port 8081)")
    c.call("management", "GET", "/models", "401 without the key (or with a wrong or expired one).", key=None)
    c.call(
        "management",
        "GET",
        "/token?type=inference",
        "Replace the inference (or management) key: TorchServe's token API, with the API key. The key file "
        "has the new key, and the answer too.",
        key="API",
    )
    c.section("Metrics (port 8082)")
    c.call(
        "metrics",
        "GET",
        "/metrics",
        "Prometheus text format (excerpt; also histograms of queue wait, inference and end-to-end latency).",
        limit=16,
    )
    c.call(
        "metrics",
        "GET",
        "/metrics?name[]=ts_inference_requests_total",
        "Only the named families (`name[]`; repeat it for more), here one of TorchServe's names that its "
        "dashboards read.",
    )
    c.section("Errors")
    c.call("inference", "POST", "/predictions/nope", "404: unknown model.", json_body={"text": TEXT})
    c.call("inference", "POST", f"/predictions/{name}/9", "404: unknown version.", json_body={"text": TEXT})
    c.call("inference", "POST", f"/predictions/{name}", "400: bad input.", json_body={"texts": [TEXT]})
    c.call("inference", "GET", f"/predictions/{name}", "405: wrong method (with `Allow`).")
    c.call("management", "POST", "/models?url=https://example.com/bbc.zip", "400: remote URLs are refused.")
    c.call(
        "management", "POST", "/models?url=../../etc", "400: paths may not leave the store or model roots."
    )
    c.call("management", "POST", f"/models?url={name}/2", "409: already registered.")
    c.call(
        "inference",
        "POST",
        f"/predictions/{name}",
        "413: a body larger than `--max_request_size` (TorchServe's 6.5 MB by default; here 7 MB).",
        json_body={"text": "word " * 1_400_000},
        shown_data="@seven-megabytes.json",
    )
    manage = server.urls["management"]
    auth = {"authorization": f"Bearer {c.key('management')}"}
    scale_to_zero = f"{manage}/models/{name}/1?min_worker=0&synchronous=true"
    httpx.put(scale_to_zero, headers=auth, timeout=120).raise_for_status()
    c.call(
        "inference",
        "POST",
        f"/predictions/{name}/1",
        f"503: a version scaled to 0 workers (`PUT /models/{name}/1?min_worker=0`).",
        json_body={"text": TEXT},
    )
    c.parts.append(
        "\nOther statuses: **503** with `Retry-After` when a version's queue (`job_queue_size`) is full; "
        "**504** when a request waited or ran longer than `response_timeout` (the worker is then killed and "
        "replaced); **500** when the handler fails (the message names the handler and step) or its worker "
        "died. The tests in `tests/serving` provoke each of them against a real server.\n"
    )
    return "".join(c.parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="a store with the model (default: the stand-in, in a temp dir)")
    parser.add_argument("--model", default="bbc")
    parser.add_argument("--out", default=str(PAGE))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="torchship-endpoints-"))
    try:
        store = work / "store"
        if args.store:
            shutil.copytree(args.store, store, ignore=shutil.ignore_patterns(".serve-snapshot.json"))
        else:
            make_stand_in(store, args.model)
        key_file = work / "key_file.json"
        settings = ServerSettings(
            inference_port=0,
            management_port=0,
            metrics_port=0,
            store=store,
            use_snapshot=False,
            key_file=key_file,
            # The same page on every machine: one CPU worker per version, whatever the cores and GPUs.
            model_defaults=ModelSettings(workers=1, device="cpu", torch_threads=1),
        )
        with ServerThread(Server(settings)) as server:
            # Every version serving, not just healthy: while only version 1 has loaded, the default is
            # version 1, and the requests meant for the latest version would go there.
            while not server.health().healthy or any(
                v.serving_workers < v.target_workers for v in server.registry.all_versions()
            ):
                httpx.get(server.urls["inference"] + "/ping")
            Path(args.out).write_text(capture(server, args.model, store, key_file), encoding="utf-8")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
