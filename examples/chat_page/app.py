"""A FastAPI chat page with a Stop button: closing the tab (or pressing Stop) stops the LLM.

Run:  python examples/chat_page/app.py      then open http://127.0.0.1:8000

The "LLM" is scoped_clients' embedded local provider, so no API key is needed.
Watch the terminal: every request ends with a ``scoped_clients.report`` line;
press Stop mid-answer and it says ``client_disconnected`` and the tokens saved.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, StreamingResponse
from scoped_clients_fastapi import RequestScopeDep, install

from scoped_clients.openai import AsyncOpenAI

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>scoped_clients chat</title>
<style>body{font:16px system-ui;max-width:40em;margin:2em auto}#answer{white-space:pre-wrap;min-height:6em;
border:1px solid #ccc;padding:.5em}button{margin:.5em .5em 0 0}</style></head>
<body><h1>Ask the local model</h1>
<input id="q" size="40" value="Tell me about request-scoped cancellation">
<button id="send">Send</button><button id="stop" disabled>Stop</button>
<p id="status">idle</p><div id="answer"></div>
<script>
let controller = null;
document.getElementById("send").onclick = async () => {
  controller = new AbortController();
  const answer = document.getElementById("answer"), status = document.getElementById("status");
  answer.textContent = ""; status.textContent = "streaming";
  document.getElementById("stop").disabled = false;
  try {
    const q = encodeURIComponent(document.getElementById("q").value);
    const response = await fetch("/chat?q=" + q, {signal: controller.signal});
    const reader = response.body.getReader(), decoder = new TextDecoder();
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      answer.textContent += decoder.decode(value, {stream: true});
    }
    status.textContent = "done";
  } catch (e) { status.textContent = "stopped"; }
  document.getElementById("stop").disabled = true;
};
document.getElementById("stop").onclick = () => controller && controller.abort();
</script></body></html>"""


def create_app(provider_url: str, model: str = "local-2000") -> FastAPI:
    app = FastAPI()
    llm = AsyncOpenAI(base_url=provider_url + "/v1", api_key="local")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/chat")
    async def chat(q: str, scope: RequestScopeDep) -> StreamingResponse:
        stream = await llm.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], max_tokens=1500, stream=True
        )

        async def tokens() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(tokens(), media_type="text/plain")

    install(app, name="chat")
    return app


def main() -> None:
    import uvicorn

    from scoped_clients.provider import LocalProvider

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    with LocalProvider(token_interval=0.05) as provider:
        port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
        uvicorn.run(create_app(provider.url), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
