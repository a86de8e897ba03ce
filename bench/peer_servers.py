"""The peers' servers for bench/peers.py: KServe's ModelServer and LitServe on the same model.

Run by bench/peers.py with each peer's own interpreter (separate venvs, since their pins
may clash with ours), never imported by the project. Both serve the model the same way our
transformers backend does — tokenizer with padding, forward pass, softmax, arg-max label —
or, for the `identity` workload, return the FP32 input as output; requests and responses
are OIP v2 JSON on `/v2/models/model/infer`, so one load generator drives all servers.

    python bench/peer_servers.py kserve|litserve PORT MODEL_DIR|identity [--batch N]
    python bench/peer_servers.py kserve-grpc PORT GRPC_PORT    (bench/front_ends.py)
"""

from __future__ import annotations

import sys
from typing import Any


class Classifier:
    """Tokenize + forward + softmax, as model_server's transformers backend does."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        torch = self.torch
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
            probs = torch.softmax(logits, dim=-1)
            score, idx = probs.max(dim=-1)
        return {
            "label": [self.labels[i] for i in idx.tolist()],
            "score": score.tolist(),
            "logits": logits.numpy(),
        }


def _outputs(result: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(result["label"])
    return [
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": result["label"]},
        {"name": "score", "datatype": "FP32", "shape": [n], "data": result["score"]},
        {
            "name": "logits",
            "datatype": "FP32",
            "shape": list(result["logits"].shape),
            "data": result["logits"].ravel().tolist(),
        },
    ]


def serve_kserve(
    port: int, model_dir: str, grpc_port: int | None = None, name: str = "model"
) -> None:
    import numpy as np
    from kserve import Model, ModelServer
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class KServeModel(Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.clf: Classifier | None = None
            self.load()

        def load(self) -> bool:
            if model_dir != "identity":
                self.clf = Classifier(model_dir)
            self.ready = True
            return True

        async def predict(
            self, payload: InferRequest, headers: Any = None, response_headers: Any = None
        ) -> InferResponse:
            first = payload.inputs[0]
            if self.clf is None:
                arr = np.asarray(first.data, dtype=np.float32).reshape(first.shape)
                out = [InferOutput("x", list(arr.shape), "FP32", arr.ravel().tolist())]
            else:
                texts = [t.decode() if isinstance(t, bytes) else t for t in first.data]
                out = [
                    InferOutput(o["name"], o["shape"], o["datatype"], o["data"])
                    for o in _outputs(self.clf(texts))
                ]
            return InferResponse(
                response_id=payload.id or "", model_name=self.name, infer_outputs=out
            )

    if grpc_port is None:
        ModelServer(http_port=port, workers=1, enable_grpc=False).start([KServeModel()])
    else:  # its OIP v2 gRPC server beside REST (bench/front_ends.py)
        ModelServer(http_port=port, grpc_port=grpc_port, workers=1, enable_grpc=True).start(
            [KServeModel()]
        )


try:  # LitServe spawns its workers: the API class must live at module level
    import litserve as ls
except ImportError:  # running in another peer's venv
    ls = None

if ls is not None:

    class LitClassifierAPI(ls.LitAPI):
        """OIP-shaped JSON in and out; the model directory comes from PEER_MODEL_DIR."""

        def setup(self, device: str) -> None:
            import os

            target = os.environ["PEER_MODEL_DIR"]
            self.clf = None if target == "identity" else Classifier(target)

        def decode_request(self, request):  # type: ignore[no-untyped-def]
            import numpy as np

            first = request["inputs"][0]
            if self.clf is None:
                return np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])
            return first["data"][0]

        def batch(self, inputs: list[Any]) -> Any:
            return inputs

        def unbatch(self, output: Any) -> list[Any]:
            return output  # type: ignore[no-any-return]

        def predict(self, x: Any) -> Any:
            if self.clf is None:
                return x
            if isinstance(x, list):  # batched
                res = self.clf(x)
                return [
                    {"label": [res["label"][i]], "score": [res["score"][i]],
                     "logits": res["logits"][i : i + 1]}
                    for i in range(len(x))
                ]  # fmt: skip
            return self.clf([x])

        def encode_response(self, output: Any) -> dict[str, Any]:
            if self.clf is None:
                return {
                    "model_name": "model",
                    "outputs": [
                        {"name": "x", "datatype": "FP32", "shape": list(output.shape),
                         "data": output.ravel().tolist()}
                    ],
                }  # fmt: skip
            return {"model_name": "model", "outputs": _outputs(output)}


def serve_litserve(port: int, model_dir: str, batch: int) -> None:
    import os

    assert ls is not None, "litserve is not installed in this interpreter"
    os.environ["PEER_MODEL_DIR"] = model_dir
    kwargs: dict[str, Any] = {"api_path": "/v2/models/model/infer"}
    if batch > 1:
        kwargs.update(max_batch_size=batch, batch_timeout=0.002)
    server = ls.LitServer(LitClassifierAPI(**kwargs), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    peer, port_s, target = sys.argv[1], sys.argv[2], sys.argv[3]
    batch_n = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 1
    sys.argv = sys.argv[:1]  # kserve parses sys.argv at import time
    if peer == "kserve":
        serve_kserve(int(port_s), target)
    elif peer == "kserve-grpc":  # PORT GRPC_PORT: the identity model as "identity"
        serve_kserve(int(port_s), "identity", grpc_port=int(target), name="identity")
    else:
        serve_litserve(int(port_s), target, batch_n)
