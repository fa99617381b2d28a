"""The vendor registry: one module per vendor, found by listing ``scoped_clients._vendors``."""

from __future__ import annotations

import importlib

from scoped_clients._vendors import by_provider, by_sdk, gen_ai_operation, generates_tokens, vendors


def test_every_vendor_module_is_found() -> None:
    providers = ["anthropic", "cohere", "gcp.gemini", "groq", "http", "mistral_ai", "openai", "qdrant"]
    assert sorted(v.provider for v in vendors()) == providers
    assert by_sdk("qdrant_client") is by_provider("qdrant")
    assert by_sdk("mistralai.client") is by_provider("mistral_ai")  # mistralai is a namespace package
    assert by_sdk("google.genai") is by_provider("gcp.gemini")
    assert by_sdk("httpx") is None  # plain HTTP has no SDK of its own


def test_each_vendor_declares_what_its_shim_exports() -> None:
    for vendor in vendors():
        if vendor.shim is None:
            continue
        shim = importlib.import_module(vendor.shim)
        declared = {d.name for d in vendor.dropins}
        assert declared <= set(shim.__all__)
        for name in declared:
            sdk_class = getattr(importlib.import_module(str(vendor.sdk)), name)
            assert issubclass(getattr(shim, name), sdk_class)


def test_the_registry_answers_for_the_vendor_of_the_call() -> None:
    assert generates_tokens("openai", "chat.completions") and generates_tokens("anthropic", "messages")
    assert not generates_tokens("openai", "embeddings") and not generates_tokens("qdrant", "query_points")
    assert not generates_tokens("openai", "messages")  # another vendor's operation name
    assert generates_tokens("my-llm", "chat")  # a provider no module knows: by operation name, as before
    assert gen_ai_operation("qdrant", "search") == "retrieval"
    assert gen_ai_operation("cohere", "embed") == "embeddings"
    assert gen_ai_operation("my-llm", "chat.completions") == "chat"
    assert gen_ai_operation("my-db", "search") is None  # retrieval names are Qdrant's own
