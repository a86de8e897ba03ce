"""Every example in examples/ and every serving path of the torch runtime, on real pods.

The CRD offers three frameworks, three tasks, four precisions, two pruning methods and three
front ends; here they run in pods the operator built, on the real node, and answer through the
ModelService's Services to off-the-shelf clients. To keep the 2-core node's time small, one
namespace (Pod Security ``restricted``) holds them all: one operator process, every
ModelService applied at once (their pods start together), each test then waits for its own.

* Every file of examples/ (read from the repository) is applied, rewritten only where this
  cluster needs it (``rewritten``): its model URI names a model built here
  (tests/modelfactory.py) and published to an in-cluster store (the S3 store when the example
  names a credentials Secret, which the test creates with the store's credentials; the HTTP
  store otherwise; nothing at the examples' hosts is contacted); small requests and one torch
  thread; at most one replica and no scaling out. Each becomes Ready and answers, through its
  stable Service and each variant's own, what the server's own backend computes here for the
  variant that answered. The GPU
  example is applied as written and checked for placement only (kwok's simulated A100 nodes:
  no pod runs there). The TensorFlow example runs in the TensorFlow runtime image; if the real
  node lacks it, the example is not applied and its test fails saying how to load it.
* TorchScript (the ``torchscript`` example: a scripted MLP and an unstructured-pruned
  variant): ``tritonclient.http`` and ``tritonclient.grpc`` (the Services' ``grpc`` port) on
  each variant's Service, against the module's own output and the module pruned here with the
  server's own function.
* Text generation (the ``textgen-transformers`` example: a tiny GPT-2 that also ends at a token
  it emits greedily, so both finish reasons occur): the official ``openai`` client (chat and
  completions, whole and streamed) and the OIP generate extension (whole and streamed); text,
  usage and finish_reason equal what the model generates here, greedily.
* ``classifier``: a trained tiny BERT with one variant per optimization the CRD offers for it
  besides int8 (int8 runs in the rollout example and tests/integration/test_real_pods.py):
  structured and unstructured pruning, float16, bfloat16. Every variant's pod really runs and
  answers through its own Service what the server's backend computes here, with the parameter
  count and sparsity of the model optimized here; wherever the baseline is sure, every variant
  gives its label.
* ``images``: a tiny ViT, the third task (image classification), answering encoded PNGs.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from manifests import BASELINE
from msv_operator import config as operator_config
from msv_operator import kube
from operator_harness import OperatorProcess, api
from realpods import (
    LABEL_MODELSERVICE,
    LABEL_VARIANT,
    SERVER,
    assert_really_ran,
    cluster_ip,
    http_json,
    pods_of,
    served,
    wait_pods_ready,
    wait_ready,
)
from realpods import stores as stores  # the fixture: the in-cluster model stores

from localcluster import cluster as lc
from localcluster import modelstores, nodes

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "kustomization.yaml")
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GRPC_PORT = 8081
READY_TIMEOUT = 480  # every pod of the module starts at once on 2 cores

# The classifier with every optimization but int8 (test_real_pods and the rollout example).
CLASSIFIER_VARIANTS = [
    {"name": "baseline"},
    {"name": "structured", "optimization": {"pruning": {"method": "structured", "amount": 0.3}}},
    {"name": "unstructured",
     "optimization": {"pruning": {"method": "unstructured", "amount": 0.5}}},
    {"name": "float16", "optimization": {"quantization": "float16"}},
    {"name": "bfloat16", "optimization": {"quantization": "bfloat16"}},
]
# How far a pod's logits may be from the same computation here (other thread count, so other
# summation order; half precision rounds that difference to its own resolution).
TOLERANCE = {"none": 1e-4, "dynamic-int8": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}

STOP_PROMPT = "hello world"  # its greedy continuation ends at the token made an EOS
LENGTH_PROMPT = "the movie was"  # ... runs to the token limit
MAX_TOKENS = 12


# -- the models, built here --------------------------------------------------------------------


@dataclass
class Models:
    """The models built here: the torch ones at once, the Keras one (importing TensorFlow
    here) only when the TensorFlow example is applied, after the others' pods started."""

    root: Path
    classifier: Path = field(init=False)
    generator: Path = field(init=False)
    scripted: Path = field(init=False)
    images: Path = field(init=False)

    def __post_init__(self) -> None:
        from modelfactory import (
            add_eos_tokens,
            greedy_tokens,
            make_image_classifier,
            make_text_generator,
            make_torchscript,
            make_trained_text_classifier,
        )

        self.classifier = self.root / "classifier"
        accuracy = make_trained_text_classifier(self.classifier)
        assert accuracy > 0.9, f"the tiny classifier did not learn its task ({accuracy})"
        self.generator = self.root / "generator"
        make_text_generator(self.generator)
        # A token the model emits greedily after STOP_PROMPT, not first: made an EOS, it
        # ends that generation early with some text before it.
        tokens = greedy_tokens(self.generator, STOP_PROMPT, MAX_TOKENS)
        stop = next((t for i, t in enumerate(tokens) if i >= 2 and t not in tokens[:i]), None)
        assert stop is not None, f"no token to stop at in {tokens}"
        add_eos_tokens(self.generator, [stop])
        self.scripted = self.root / "scripted"
        make_torchscript(self.scripted)
        self.images = self.root / "images"
        make_image_classifier(self.images)

    @property
    def keras(self) -> Path:
        path = self.root / "keras"
        if not path.exists():
            from modelfactory import make_keras_cnn

            make_keras_cnn(path)
        return path

    def for_example(self, framework: str, task: str | None) -> Path:
        """The model built here for an example of ``framework`` and ``task``."""
        if framework == "tensorflow":
            return self.keras
        found = {("transformers", "text-classification"): self.classifier,
                 ("transformers", "text-generation"): self.generator,
                 ("torchscript", None): self.scripted}.get((framework, task))
        assert found is not None, (f"no test model for an example of framework {framework}, "
                                   f"task {task}: add one to Models")
        return found


# -- the examples, as this cluster runs them ---------------------------------------------------


def rewritten(example: dict[str, Any], ns: str, uri: str) -> dict[str, Any]:
    """``example`` in ``ns`` as the real node runs it: the model from ``uri``, small requests
    and one torch thread, at most one replica and no scaling out (2 cores)."""
    out = copy.deepcopy(example)
    out["metadata"]["namespace"] = ns
    spec = out["spec"]
    spec["model"]["uri"] = uri
    server = spec.setdefault("server", {})
    server["resources"] = copy.deepcopy(SERVER["resources"])
    if spec["model"]["framework"] != "tensorflow":
        server["torchThreads"] = SERVER["torchThreads"]
    if "replicas" in spec:
        spec["replicas"] = min(spec["replicas"], 1)
    if "autoscaling" in spec:
        spec["autoscaling"]["maxReplicas"] = spec["autoscaling"].get("minReplicas", 1)
    return out


def tensorflow_image_missing(k: kube.Kube) -> str | None:
    """Why the TensorFlow example cannot serve here (None: it can): the TensorFlow runtime
    image (``msv_operator.config.DEFAULT_IMAGES``) must be on the real node (kubelet's list
    of the node's containerd images)."""
    image = str(operator_config.DEFAULT_IMAGES["tensorflow"].cpu)
    ref = image if image.split("/")[0].count(".") else f"docker.io/{image}"
    node = k.get("v1", "Node", None, "node-1") or {}
    names = {n for i in (node.get("status") or {}).get("images") or []
             for n in i.get("names") or []}
    if ref not in names:
        return (f"the real node has no TensorFlow runtime image {ref} (build it and load it "
                "into the cluster: python -m localcluster images load)")
    return None


@dataclass
class Deployed:
    """What the module applied: the namespace, the models, the ModelServices by example."""

    ns: str
    k: kube.Kube
    models: Models
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)  # file stem -> applied
    missing: dict[str, str] = field(default_factory=dict)  # file stem -> why not applied
    classifier: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployed(cluster: lc.Cluster, crd: None, stores: None, module_real_namespace: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    ns = module_real_namespace
    k = api()
    op = OperatorProcess(ns, name="paths-operator")  # starts while the models are built
    try:
        d = Deployed(ns, k, Models(tmp_path_factory.mktemp("path-models")))
        uri, digest = modelstores.publish_http(d.models.classifier, f"{ns}-classifier")
        d.classifier = served("classifier", ns, uri, digest, variants=CLASSIFIER_VARIANTS,
                              traffic={v["name"]: 100 if v["name"] == "baseline" else 0
                                       for v in CLASSIFIER_VARIANTS})
        k.apply(d.classifier)
        uri, digest = modelstores.publish_http(d.models.images, f"{ns}-images")
        d.images = served("images", ns, uri, digest)
        d.images["spec"]["model"]["task"] = "image-classification"
        k.apply(d.images)
        tf_missing = tensorflow_image_missing(k)
        # each applied once its model is published, TensorFlow's last: the pods start together
        bodies = {path.stem: yaml.safe_load(path.read_text()) for path in EXAMPLES}
        for stem, body in sorted(bodies.items(),
                                 key=lambda i: i[1]["spec"]["model"]["framework"] == "tensorflow"):
            spec = body["spec"]
            if spec["model"]["framework"] == "tensorflow" and tf_missing:
                d.missing[stem] = tf_missing
                continue
            if "gpu" in spec:  # kwok's GPU nodes: scheduled, never run, nothing pulled
                body["metadata"]["namespace"] = ns
            else:
                local = d.models.for_example(spec["model"]["framework"], spec["model"].get("task"))
                secret = spec["model"].get("credentialsSecret")
                if secret:
                    k.apply(modelstores.credentials_secret(secret, ns))
                    uri, _ = modelstores.publish_s3(local, "models", f"{ns}/{stem}.tar.gz")
                else:
                    uri, _ = modelstores.publish_http(local, f"{ns}-{stem}")
                body = rewritten(body, ns, uri)
            k.apply(body)
            d.examples[stem] = body
        op.wait_up()
        yield d
        assert op.alive, f"the operator died: {op.tail()}"
    finally:
        op.close()
        k.close()


# -- what the server computes, here ---------------------------------------------------------------


def load_options(spec: dict[str, Any], variant: str) -> Any:
    from model_server.backends.base import LoadOptions

    (v,) = [v for v in spec.get("variants") or BASELINE if v["name"] == variant]
    opt = v.get("optimization") or {}
    pruning = opt.get("pruning") or {}
    return LoadOptions(task=spec["model"].get("task"), device="cpu",
                       quantization=opt.get("quantization", "none"),
                       pruning_method=pruning.get("method", "none"),
                       pruning_amount=float(pruning.get("amount", 0.0)))


_BACKENDS: dict[tuple[str, Path, str], Any] = {}


def reference(spec: dict[str, Any], path: Path, variant: str) -> Any:
    """The server's backend for ``variant`` of ``spec``, loaded here from ``path`` (once)."""
    from model_server.backends import create_backend

    options = load_options(spec, variant)
    key = (spec["model"]["framework"], path, repr(options))
    if key not in _BACKENDS:
        backend = create_backend(key[0])
        backend.load(path, options)
        _BACKENDS[key] = backend
    return _BACKENDS[key]


def texts(n: int = 16) -> list[str]:
    from modelfactory import sentiment_sentences

    return sentiment_sentences(n, seed=4242)[0]


def tensor(seed: int = 0, rows: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def infer_http(ip: str, name: str, inputs: dict[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
    """(the variant that answered, every output) of one request through ``ip``'s port 80."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{ip}:80", network_timeout=60.0)
    try:
        meta = client.get_model_metadata(name)
        wire = []
        for key, value in inputs.items():
            datatype = "BYTES" if value.dtype == object else "FP32"
            wire.append(httpclient.InferInput(key, list(value.shape), datatype))
            wire[-1].set_data_from_numpy(value)
        result = client.infer(name, wire)
        variant = str(result.get_response()["parameters"]["variant"])
        return variant, {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()


def strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def assert_like(got: dict[str, Any], expected: dict[str, Any], atol: float, what: str) -> None:
    """Outputs ``got`` equal ``expected`` (numbers within ``atol``; labels exactly, except
    where the expected logits are within ``2 * atol`` of a tie)."""
    assert set(got) == set(expected), (what, set(got), set(expected))
    for key, value in expected.items():
        if value.dtype == object:
            continue
        np.testing.assert_allclose(got[key], value, rtol=0, atol=atol, err_msg=f"{what}: {key}")
    if "label" in expected:
        top2 = np.sort(expected["logits"], axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * atol
        got_labels, want = np.array(strings(got["label"])), np.array(strings(expected["label"]))
        assert (got_labels[clear] == want[clear]).all(), (what, got_labels, want)


def example(d: Deployed, stem: str) -> dict[str, Any]:
    if stem in d.missing:
        pytest.fail(d.missing[stem])
    return d.examples[stem]


# -- the tests ------------------------------------------------------------------------------------


def test_kustomization_lists_every_example() -> None:
    listed = yaml.safe_load((ROOT / "examples" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in EXAMPLES]


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.tensorflow] if "tensorflow" in p.stem else [])
    for p in EXAMPLES])
def test_example_serves(path: Path, deployed: Deployed) -> None:
    d, body = deployed, example(deployed, path.stem)
    name, spec = body["metadata"]["name"], body["spec"]
    ms = wait_ready(d.k, d.ns, name, timeout=READY_TIMEOUT)
    variants = [v["name"] for v in spec.get("variants") or BASELINE]
    assert sorted(v["name"] for v in ms["status"]["variants"]) == sorted(variants)
    pods = pods_of(d.k, d.ns, name)
    assert pods
    if "gpu" in spec:  # placement only: kwok's simulated GPU nodes of the products asked for
        gpu = spec["gpu"]
        for pod in pods:
            node = d.k.get("v1", "Node", None, pod["spec"]["nodeName"]) or {}
            assert node["metadata"]["annotations"].get(nodes.KWOK_ANNOTATION) == "fake", node
            assert node["metadata"]["labels"].get(GPU_PRODUCT_LABEL) in gpu["products"], (
                pod["metadata"]["name"], node["metadata"]["name"])
            requests = pod["spec"]["containers"][0]["resources"]["requests"]
            assert requests[gpu["resourceName"]] == str(gpu["count"]), requests
        return
    # Ready needs the serving variants; a rollout's candidate may still be starting
    for pod in wait_pods_ready(d.k, d.ns, name, variants):
        assert_really_ran(pod)
        # the model came from the store the test published it to
        assert pod["spec"]["initContainers"][0]["args"][:2] == ["pull", spec["model"]["uri"]]

    # an answer through the stable Service, and one from each variant's own Service (with
    # two or more variants), equal to what the server computes here for the variant
    d_model = d.models.for_example(spec["model"]["framework"], spec["model"].get("task"))
    ip = cluster_ip(d.k, d.ns, name)
    if spec["model"].get("task") == "text-generation":
        out = http_json(f"http://{ip}/v2/models/{name}/generate",
                        {"text_input": LENGTH_PROMPT, "parameters": {"max_tokens": 6}},
                        timeout=60)
        assert out["text_output"] == expected_generation(d_model, LENGTH_PROMPT, 6).text, out
        return
    inputs = inputs_for(spec, http_json(f"http://{ip}/v2/models/{name}"))
    services = [(name, None)] + [(f"{name}-{v}", v) for v in variants if len(variants) > 1]
    for service, variant in services:
        answered, got = infer_http(cluster_ip(d.k, d.ns, service), name, inputs)
        assert variant in (None, answered), (service, answered)
        expected = reference(spec, d_model, answered).predict(inputs)
        quantization = load_options(spec, answered).quantization
        assert_like(got, expected, TOLERANCE[quantization], f"{service}: {answered}")


def inputs_for(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """A request's inputs for a model of ``spec`` with metadata ``meta``."""
    from modelfactory import colour_images, make_png

    (announced,) = meta["inputs"]
    task = spec["model"].get("task")
    if task == "text-classification":
        value = np.array([t.encode() for t in texts()], dtype=object)
    elif task == "image-classification":
        value = np.array([make_png(seed=i) for i in range(3)], dtype=object)
    elif spec["model"]["framework"] == "tensorflow":
        value = colour_images(4, seed=1)[0]
    else:
        value = tensor()
    return {announced["name"]: value}


def test_torchscript_over_http_and_grpc_on_each_variant(deployed: Deployed) -> None:
    import torch
    import tritonclient.grpc as grpcclient

    from model_server.optimize.prune import prune_script_module_unstructured

    d, body = deployed, example(deployed, "torchscript")
    name, spec = body["metadata"]["name"], body["spec"]
    wait_ready(d.k, d.ns, name, timeout=READY_TIMEOUT)
    x = tensor(seed=7, rows=6)
    module = torch.jit.load(str(d.models.scripted / "model.pt")).eval()
    with torch.no_grad():
        baseline = module(torch.from_numpy(x)).numpy()
    (sparse,) = [v for v in spec["variants"] if v["name"] != "baseline"]
    pruned_module = prune_script_module_unstructured(
        torch.jit.load(str(d.models.scripted / "model.pt")).eval(),
        sparse["optimization"]["pruning"]["amount"])
    with torch.no_grad():
        pruned = pruned_module(torch.from_numpy(x)).numpy()
    assert np.abs(pruned - baseline).max() > 1e-3  # the two variants are told apart
    expected = {"baseline": baseline, sparse["name"]: pruned}

    for variant, want in expected.items():
        ip = cluster_ip(d.k, d.ns, f"{name}-{variant}")
        answered, got = infer_http(ip, name, {"input": x})
        assert answered == variant
        np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)

        client = grpcclient.InferenceServerClient(f"{ip}:{GRPC_PORT}")
        try:
            assert client.is_server_ready() and client.is_model_ready(name)
            meta = client.get_model_metadata(name, as_json=True)
            assert meta["platform"] == "pytorch_libtorch", meta
            assert [i["name"] for i in meta["inputs"]] == ["input"]
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer(name, [inp],
                                  outputs=[grpcclient.InferRequestedOutput("logits")])
            response = result.get_response(as_json=True)
            assert response["parameters"]["variant"]["string_param"] == variant, response
            np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
        finally:
            client.close()


@dataclass(frozen=True)
class Expected:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def expected_generation(path: Path, prompt: str, max_tokens: int = MAX_TOKENS) -> Expected:
    """What the server must answer for ``prompt`` (greedy, ``max_tokens``): the model's
    text, its prompt and completion tokens, why it ended."""
    from modelfactory import greedy_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = greedy_tokens(path, prompt, max_tokens)
    return Expected(tok.decode(ids, skip_special_tokens=True),
                    len(tok(prompt, add_special_tokens=False)["input_ids"]), len(ids),
                    "length" if len(ids) >= max_tokens else "stop")


def test_text_generation_through_the_openai_client(deployed: Deployed) -> None:
    import openai

    d, body = deployed, example(deployed, "textgen-transformers")
    name = body["metadata"]["name"]
    wait_ready(d.k, d.ns, name, timeout=READY_TIMEOUT)
    ip = cluster_ip(d.k, d.ns, name)
    oai = openai.OpenAI(base_url=f"http://{ip}/v1", api_key="unused", max_retries=0,
                        timeout=60)
    assert [m.id for m in oai.models.list().data] == [name]

    cases = {prompt: expected_generation(d.models.generator, prompt)
             for prompt in (STOP_PROMPT, LENGTH_PROMPT)}
    # the model was made so that both ends occur; both then must be reported
    assert {e.finish_reason for e in cases.values()} == {"stop", "length"}, cases
    for prompt, want in cases.items():
        done = oai.completions.create(model=name, prompt=prompt, max_tokens=MAX_TOKENS)
        (choice,) = done.choices
        assert (choice.text, choice.finish_reason) == (want.text, want.finish_reason), prompt
        assert done.usage is not None
        assert (done.usage.prompt_tokens, done.usage.completion_tokens,
                done.usage.total_tokens) == (want.prompt_tokens, want.completion_tokens,
                                             want.prompt_tokens + want.completion_tokens)

        chunks = list(oai.completions.create(model=name, prompt=prompt, max_tokens=MAX_TOKENS,
                                             stream=True, stream_options={"include_usage": True}))
        pieces = [c.choices[0].text for c in chunks if c.choices]
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert "".join(pieces) == want.text, (prompt, pieces)
        if " " in want.text.strip():  # words are sent as they come, not all at the end
            assert len([p for p in pieces if p]) > 1, pieces
        assert reasons[-1] == want.finish_reason and not any(reasons[:-1]), reasons
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == (
            want.completion_tokens)

    # chat: no chat template in this tokenizer, so the server's plain transcript
    content = STOP_PROMPT
    want = expected_generation(d.models.generator, f"user: {content}\nassistant:")
    messages: Any = [{"role": "user", "content": content}]
    chat = oai.chat.completions.create(model=name, messages=messages, max_tokens=MAX_TOKENS)
    (choice,) = chat.choices
    assert choice.message.role == "assistant"
    assert (choice.message.content, choice.finish_reason) == (want.text, want.finish_reason)
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (
        want.prompt_tokens, want.completion_tokens)
    stream = list(oai.chat.completions.create(model=name, messages=messages,
                                              max_tokens=MAX_TOKENS, stream=True))
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == want.text
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == want.finish_reason


def test_text_generation_through_the_generate_extension(deployed: Deployed) -> None:
    d, body = deployed, example(deployed, "textgen-transformers")
    name = body["metadata"]["name"]
    wait_ready(d.k, d.ns, name, timeout=READY_TIMEOUT)
    ip = cluster_ip(d.k, d.ns, name)
    for prompt in (STOP_PROMPT, LENGTH_PROMPT):
        want = expected_generation(d.models.generator, prompt)
        request = {"text_input": prompt, "parameters": {"max_tokens": MAX_TOKENS}}
        out = http_json(f"http://{ip}/v2/models/{name}/generate", request, timeout=60)
        assert (out["model_name"], out["text_output"]) == (name, want.text), out

        req = urllib.request.Request(f"http://{ip}/v2/models/{name}/generate_stream",
                                     data=json.dumps(request).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = [json.loads(line[len(b"data: "):]) for line in r.read().splitlines()
                      if line.startswith(b"data: ")]
        assert all("error" not in e for e in events), events
        assert "".join(e["text_output"] for e in events) == want.text, events


def test_classifier_every_optimization_serves_from_its_own_service(deployed: Deployed) -> None:
    d = deployed
    spec = d.classifier["spec"]
    wait_ready(d.k, d.ns, "classifier", timeout=READY_TIMEOUT)
    sentences = texts()
    inputs = {"text": np.array([t.encode() for t in sentences], dtype=object)}
    answers: dict[str, dict[str, Any]] = {}
    params: dict[str, dict[str, Any]] = {}
    for v in CLASSIFIER_VARIANTS:
        variant = v["name"]
        (pod,) = d.k.list("v1", "Pod", d.ns,
                          f"{LABEL_MODELSERVICE}=classifier,{LABEL_VARIANT}={variant}")
        assert_really_ran(pod)
        ip = cluster_ip(d.k, d.ns, f"classifier-{variant}")
        params[variant] = http_json(f"http://{ip}/v2/models/classifier")["parameters"]
        answered, got = infer_http(ip, "classifier", inputs)
        assert answered == variant
        backend = reference(spec, d.models.classifier, variant)
        options, info = load_options(spec, variant), backend.info()
        assert (params[variant]["quantization"], params[variant]["pruning_method"]) == (
            options.quantization, options.pruning_method), params[variant]
        # the model the pod optimized is the one optimized here
        assert (params[variant]["parameters"], params[variant]["sparsity"]) == (
            info.parameters, info.sparsity), params[variant]
        assert got["logits"].shape == (len(sentences), 2)
        assert set(strings(got["label"])) <= {"NEGATIVE", "POSITIVE"}
        assert_like(got, backend.predict(inputs), TOLERANCE[options.quantization],
                    f"classifier/{variant}")
        answers[variant] = got

    assert params["structured"]["parameters"] < params["baseline"]["parameters"]
    assert params["structured"]["ffn_neurons_removed"] > 0
    assert params["unstructured"]["sparsity"] > params["baseline"]["sparsity"]
    base = answers["baseline"]
    # On this trained model, pruning (30% of the FFN, half the weights) moves the logits by a
    # fraction of one and half precision by less: wherever the baseline is sure, every
    # variant gives the baseline's label.
    margin = np.abs(np.diff(base["logits"], axis=-1))[:, 0]
    sure = margin > 1.0
    assert sure.sum() >= len(sentences) // 2, margin  # a trained model is mostly sure
    labels = {v: np.array(strings(a["label"])) for v, a in answers.items()}
    for variant, got_labels in labels.items():
        assert (got_labels[sure] == labels["baseline"][sure]).all(), (variant, labels)
    agreement = {v: float(np.mean(got == labels["baseline"])) for v, got in labels.items()}
    print(f"agreement with the baseline over {len(sentences)} sentences: {agreement}")


def test_image_classification_serves(deployed: Deployed) -> None:
    d = deployed
    spec = d.images["spec"]
    wait_ready(d.k, d.ns, "images", timeout=READY_TIMEOUT)
    (pod,) = pods_of(d.k, d.ns, "images")
    assert_really_ran(pod)
    ip = cluster_ip(d.k, d.ns, "images")
    meta = http_json(f"http://{ip}/v2/models/images")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("image", "BYTES")]
    inputs = inputs_for(spec, meta)  # encoded PNGs
    variant, got = infer_http(ip, "images", inputs)
    assert variant == "baseline"
    assert set(strings(got["label"])) <= {"cat", "dog", "bird"}
    assert_like(got, reference(spec, d.models.images, variant).predict(inputs),
                TOLERANCE["none"], "images")
