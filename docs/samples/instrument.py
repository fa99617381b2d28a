"""OpenTelemetry and Prometheus, once at start-up."""

from __future__ import annotations

# --8<-- [start:instrument]
from scoped_clients import otel, prometheus

stop_otel = otel.instrument()  # the global providers, or instrument(tracer_provider=..., meter_provider=...)
stop_prometheus = prometheus.instrument()  # prometheus_client.REGISTRY, or instrument(registry); serve it
# --8<-- [end:instrument]


def check(provider: object) -> None:
    import anyio
    from prometheus_client import REGISTRY

    from scoped_clients import RequestScope
    from scoped_clients.openai import AsyncOpenAI

    async def one_call() -> None:
        async with AsyncOpenAI() as client, RequestScope(name="chat"):
            await client.chat.completions.create(model="local-3", messages=[{"role": "user", "content": "hi"}])

    try:
        anyio.run(one_call)
        used = REGISTRY.get_sample_value(
            "scoped_clients_tokens_used_total",
            {"provider": "openai", "model": "local-3", "operation": "chat", "token_type": "output"},
        )
        assert used == 3
    finally:
        stop_otel()
        stop_prometheus()
