"""msv_operator.gpufit: safetensors headers and the GPU memory estimate, part by part."""

from __future__ import annotations

import json
import math

import pytest
import safetensors_headers as sh
from msv_operator import gpufit, spec
from msv_operator.gpufit import HeaderError, Workload

from msv_contract import capabilities as caps

GIB = 2**30


def parsed(shape: sh.LlamaShape, dtype: str = "F16") -> gpufit.Header:
    return gpufit.parse_header(sh.header(shape.tensors(), dtype))


def generation(quantization: str = "float16", tokens: int | None = 2048) -> Workload:
    return Workload("transformers", "text-generation", quantization, sequence_length=tokens)


# ---- the header --------------------------------------------------------------------------------

def test_the_length_prefix_is_eight_little_endian_bytes_bounded_by_the_limit() -> None:
    assert gpufit.header_length((1234).to_bytes(8, "little")) == 1234
    with pytest.raises(HeaderError, match="shorter than the 8-byte"):
        gpufit.header_length(b"\x01\x02")
    with pytest.raises(HeaderError, match="header length is 0 bytes"):
        gpufit.header_length(bytes(8))
    with pytest.raises(HeaderError, match="above the 1000-byte limit"):
        gpufit.header_length((1001).to_bytes(8, "little"), limit=1000)
    # the default limit: 100 MB, the safetensors library's own
    with pytest.raises(HeaderError, match="above the 100000000-byte limit"):
        gpufit.header_length((10**8 + 1).to_bytes(8, "little"))


def test_a_header_lists_its_tensors_and_ignores_the_metadata() -> None:
    raw = sh.header([("a.weight", (3, 4)), ("a.bias", (4,)), ("step", ())], "F32",
                    metadata={"format": "pt", "note": "x"})
    h = gpufit.parse_header(raw)
    assert [(t.name, t.dtype, t.shape) for t in h.tensors] == [
        ("a.weight", "F32", (3, 4)), ("a.bias", "F32", (4,)), ("step", "F32", ())]
    assert h.parameters == 12 + 4 + 1
    assert h.nbytes == 17 * 4


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"__metadata__": {"format": "pt"}}', "lists no tensor"),
    (b'{"w": [1]}', "tensor 'w': expected an object"),
    (b'{"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 2]}}', "'F17' is not a"),
    (b'{"w": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}', "non-negative integers"),
    (b'{"w": {"dtype": "F16", "shape": [true], "data_offsets": [0, 2]}}', "non-negative"),
    (b'{"w": {"dtype": "F16", "shape": "2", "data_offsets": [0, 2]}}', "non-negative"),
    (b'{"w": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}', "0 <= begin <= end"),
    (b'{"w": {"dtype": "F16", "shape": [2], "data_offsets": [0]}}', "0 <= begin <= end"),
    (b'{"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 10]}}',
     "span 10 bytes, but F16 x \\[2, 3\\] takes 12"),
])
def test_a_malformed_header_is_refused_naming_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        gpufit.parse_header(raw)


def test_every_dtype_counts_its_bits_sub_byte_ones_packed() -> None:
    assert gpufit.Tensor("x", "F4", (3, 4)).nbytes == 6
    assert gpufit.Tensor("x", "F6_E2M3", (4,)).nbytes == 3
    assert gpufit.Tensor("x", "BF16", (5,)).nbytes == 10
    assert gpufit.Tensor("x", "I64", (2,)).nbytes == 16
    assert set(gpufit.DTYPE_BITS) > gpufit.FLOAT_DTYPES


# ---- the shape -------------------------------------------------------------------------------

def test_the_shape_reads_config_json_under_its_many_spellings() -> None:
    llama = gpufit.shape_of(sh.LLAMA_2_70B.config())
    assert (llama.hidden, llama.layers, llama.heads, llama.kv_heads, llama.head_dim,
            llama.intermediate, llama.vocab, llama.context) == (
        8192, 80, 64, 8, 128, 28672, 32000, 4096)
    assert llama.tied_embeddings is False
    gpt2 = gpufit.shape_of({"n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
                            "n_positions": 1024, "vocab_size": 50257})
    assert (gpt2.hidden, gpt2.kv_heads, gpt2.head_dim, gpt2.intermediate, gpt2.context) == (
        768, 12, 64, 3072, 1024)
    assert gpt2.tied_embeddings is True  # transformers' default
    vit = gpufit.shape_of({"hidden_size": 768, "image_size": 224, "patch_size": 16})
    assert vit.context == 14 * 14 + 1
    falcon = gpufit.shape_of({"hidden_size": 4544, "num_attention_heads": 71,
                              "multi_query": True})
    assert falcon.kv_heads == 1
    nested = gpufit.shape_of({"text_config": {"hidden_size": 64, "num_hidden_layers": 2}})
    assert (nested.hidden, nested.layers) == (64, 2)
    assert gpufit.shape_of({"hidden_size": "64", "num_hidden_layers": True}) == (
        gpufit.ModelShape())
    assert gpufit.shape_of(None) == gpufit.ModelShape()


# ---- the estimate, part by part -----------------------------------------------------------------

def test_a_13b_float16_generator_part_by_part() -> None:
    shape = sh.LLAMA_2_13B
    est = gpufit.estimate_from_headers([parsed(shape)], generation("float16"), shape.config())
    params = 13_015_864_320
    assert est.parameters == params
    assert est.artifact_weight_bytes == 2 * params  # 26.0 GB of fp16 weights
    assert est.weight_bytes == 2 * params
    assert est.load_peak_bytes == est.weight_bytes  # cast on the CPU, then moved
    assert est.rows == gpufit.GENERATION_ROWS and est.tokens == 2048
    assert est.kv_cache_bytes == 2 * 40 * 40 * 128 * 2048 * 16 * 2
    width = 4 * 5120 + 2 * 13824
    assert est.activation_bytes == 16 * 2048 * width * 2 + 16 * 32000 * 4 * 2
    assert est.overhead_bytes == gpufit.RUNTIME_OVERHEAD_BYTES
    assert est.total_bytes == (est.weight_bytes + est.activation_bytes + est.kv_cache_bytes
                               + est.overhead_bytes)
    assert 53 * GIB < est.total_bytes < 54 * GIB
    assert est.notes == ()


def test_quantization_none_holds_a_float16_artifact_at_float32_as_the_server_loads_it() -> None:
    shape = sh.LLAMA_2_13B
    est = gpufit.estimate_from_headers([parsed(shape)], generation(caps.NONE), shape.config())
    assert est.weight_bytes == 4 * est.parameters == 2 * est.artifact_weight_bytes
    # and activations and the KV cache are float32 too
    assert est.kv_cache_bytes == 2 * 40 * 40 * 128 * 2048 * 16 * 4


def test_int8_quantizes_linear_weights_only_on_the_cpu_before_the_move_to_the_gpu() -> None:
    shape = sh.LLAMA_2_13B
    h = parsed(shape)
    w = Workload("transformers", "text-classification", "dynamic-int8", max_batch_size=8,
                 sequence_length=512)
    est = gpufit.estimate_from_headers([h], w, shape.config())
    linear = [t for t in h.tensors if gpufit.is_linear_weight(t)]
    other = [t for t in h.tensors if not gpufit.is_linear_weight(t)]
    assert {t.name for t in other} == {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}" for i in range(40)
        for n in ("input_layernorm.weight", "post_attention_layernorm.weight")}
    assert "lm_head.weight" in {t.name for t in linear}
    expected = (sum(t.numel + t.shape[0] * gpufit.INT8_ROW_BYTES for t in linear)
                + sum(4 * t.numel for t in other))
    assert est.weight_bytes == expected
    assert 13.4e9 < est.weight_bytes < 13.6e9  # "13 GB": int8 plus float32 embeddings
    # the server quantizes where it loaded the model (the CPU), then moves the int8 weights:
    # the GPU never holds the float32 model (model_server.backends.transformers_backend)
    assert est.load_peak_bytes == est.weight_bytes < 4 * est.parameters
    assert est.total_bytes == est.steady_bytes < 15 * GIB


def test_int8_of_a_tied_generator_adds_an_int8_copy_of_the_output_projection() -> None:
    tied = sh.LlamaShape(64, 2, 4, 4, 128, 1000, 128, tied=True)
    h = parsed(tied)
    w = Workload("transformers", "text-generation", "dynamic-int8", sequence_length=16)
    est = gpufit.estimate_from_headers([h], w, tied.config())
    untied_config = {**tied.config(), "tie_word_embeddings": False}
    plain = gpufit.estimate_from_headers([h], w, untied_config)
    assert est.weight_bytes - plain.weight_bytes == 1000 * 64 + 1000 * gpufit.INT8_ROW_BYTES
    # float16 keeps the tie: no copy
    half = Workload("transformers", "text-generation", "float16", sequence_length=16)
    assert gpufit.estimate_from_headers([h], half, tied.config()).weight_bytes == 2 * h.parameters


def test_structured_pruning_shrinks_the_feed_forward_width_as_the_server_does() -> None:
    from model_server.optimize import prune

    for width, amount in ((13824, 0.3), (64, 0.5), (37, 0.25), (3072, 0.9)):
        assert gpufit.keep_width(width, amount) == prune._keep_count(width, amount)
    shape = sh.LLAMA_2_7B
    h = parsed(shape)
    kept = gpufit.keep_width(11008, 0.3)
    w = Workload("transformers", "text-generation", "float16", "structured", 0.3,
                 sequence_length=256)
    est = gpufit.estimate_from_headers([h], w, shape.config())
    full = gpufit.estimate_from_headers([h], generation("float16", 256), shape.config())
    assert full.weight_bytes - est.weight_bytes == 32 * 3 * 4096 * (11008 - kept) * 2
    unstructured = Workload("transformers", "text-generation", "float16", "unstructured", 0.3,
                            sequence_length=256)
    assert gpufit.estimate_from_headers([h], unstructured, shape.config()) == full


def test_torchscript_is_loaded_onto_the_device_as_saved_then_cast() -> None:
    w = Workload("torchscript", None, "float16", max_batch_size=4)
    est = gpufit.estimate_from_size(8 * 10**9, w)
    assert est.source == "artifact-size" and est.parameters is None
    assert est.weight_bytes == 4 * 10**9
    assert est.load_peak_bytes == 8 * 10**9
    assert est.activation_bytes == math.ceil(gpufit.ACTIVATION_FRACTION * 4 * 10**9)
    assert est.kv_cache_bytes == 0
    assert any("size" in n for n in est.notes) and any("activations" in n for n in est.notes)


def test_a_size_with_a_config_still_counts_activations_and_the_kv_cache() -> None:
    shape = sh.LLAMA_2_7B
    est = gpufit.estimate_from_size(2 * shape.parameters, generation("float16", 1024),
                                    shape.config())
    assert est.weight_bytes == shape.parameters  # size taken as float32, halved
    assert est.kv_cache_bytes == 2 * 32 * 32 * 128 * 1024 * 16 * 2


def test_without_a_config_the_context_and_kv_cache_are_noted_as_unknown() -> None:
    h = parsed(sh.OPEN_LLAMA_3B)
    est = gpufit.estimate_from_headers([h], generation("float16", None))
    assert est.kv_cache_bytes == 0 and est.tokens is None
    assert any("KV cache not counted" in n for n in est.notes)
    hidden_only = gpufit.estimate_from_headers([h], generation("float16", None),
                                               {"hidden_size": 3200})
    assert hidden_only.tokens == gpufit.UNKNOWN_CONTEXT_TOKENS
    assert any("512 tokens per row" in n for n in hidden_only.notes)


def test_inference_batches_max_batch_size_rows_generation_the_servers_streams() -> None:
    from model_server.backends import transformers_backend

    assert gpufit.GENERATION_ROWS == transformers_backend.GENERATION_MAX_BATCH
    assert Workload("transformers", "text-classification", max_batch_size=3).rows == 3
    assert Workload("transformers", "text-generation", max_batch_size=3).rows == 16


def test_a_workload_from_a_parsed_spec() -> None:
    body = {"metadata": {"name": "m", "namespace": "ns"}, "spec": {
        "model": {"uri": "s3://b/m/", "framework": "transformers", "task": "text-generation"},
        "server": {"batching": {"maxBatchSize": 4}},
        "variants": [{"name": "base"}, {"name": "int8", "optimization": {
            "quantization": "dynamic-int8", "pruning": {"method": "structured",
                                                         "amount": 0.2}}}]}}
    parsed_spec = spec.parse_spec(body)
    w = Workload.of(parsed_spec, parsed_spec.variants[1], sequence_length=100)
    assert w == Workload("transformers", "text-generation", "dynamic-int8", "structured", 0.2,
                         4, 100)


def test_the_status_object_carries_every_part_and_the_total() -> None:
    shape = sh.LLAMA_2_13B
    est = gpufit.estimate_from_headers([parsed(shape)], generation(), shape.config())
    status = est.to_status()
    assert status["totalBytes"] == est.total_bytes
    assert set(status) == {"source", "totalBytes", "weightBytes", "artifactWeightBytes",
                           "loadPeakBytes", "activationBytes", "kvCacheBytes", "overheadBytes",
                           "rows", "parameters", "tokens"}
    json.dumps(status)  # plain JSON for the status
    assert gpufit.gib(est.total_bytes) == "53.2 GiB"


def test_no_tensor_or_no_size_is_an_error_not_an_estimate() -> None:
    with pytest.raises(HeaderError, match="no tensor"):
        gpufit.estimate_from_headers([], generation())
    with pytest.raises(HeaderError, match="holds no weights"):
        gpufit.estimate_from_size(0, generation())
