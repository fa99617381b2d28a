"""Draw the documentation's pictures: ``python docs/_scripts/diagrams.py [OUT_DIR]``.

* ``layers.svg``: the layers one call goes through, and the way back of a cancel;
* ``timeline.svg``: what the provider keeps doing after the user leaves, raw SDKs against
  scoped_clients, with the demo's figures (``scoped-clients demo``: 300-token answers at 10 ms a
  token, a vector search and a rerank of 1 s each; the user leaves 50 ms into the answer, or during
  the search).

Needs matplotlib (the ``bench`` extra). Text stays text (``svg.fonttype: none``) and the files carry no
date, so a redraw changes them only when the picture changes; ``tests/test_docs_site.py`` redraws them
and compares their text with the committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parent.parent / "images"
RAW = "#c0392b"
SCOPED = "#2471a3"
GREY = "#555555"

#: the demo's figures (docs/index.md's table): units the provider produced after the drop, and when it
#: saw the client go (seconds after the drop; None: never, it ran to the end)
CHAT_RAW_UNITS, CHAT_SCOPED_SEEN = 295, 0.0011
RAG_RAW_UNITS, RAG_SCOPED_SEEN = 497, 0.0013
TOKEN_INTERVAL, SEARCH_DELAY = 0.01, 1.0

#: (title, what it does) from the top of the stack to the socket
LAYERS = [
    ("your code", "a FastAPI / Starlette / aiohttp handler, an agent run, a Celery or arq job"),
    ("ScopeMiddleware, adapters", "one RequestScope per request; the client leaving cancels it"),
    ("RequestScope", "ambient (a ContextVar): owns calls, child tasks, tools, hooks; one report at the end"),
    ("drop-in client", "the vendor's own client (openai, anthropic, cohere, qdrant, httpx / httpx2)"),
    ("scoped transport", "registers each request and body read with the scope; refuses after a cancel"),
    ("the SDK's transport", "httpcore / httpcore2 connection pool, HTTP/1.1"),
    ("socket", "the provider sees the disconnect and stops generating"),
]


def _style() -> None:
    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: searchable, small, no font files embedded
            "svg.hashsalt": "scoped_clients",  # stable element ids
            "font.family": "sans-serif",
            "font.size": 10,
        }
    )


def layers(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.6, 6.4))
    ax.set_xlim(0, 12)
    ax.set_ylim(-0.4, len(LAYERS) * 1.0 + 0.2)
    ax.axis("off")
    for i, (title, what) in enumerate(LAYERS):
        y = len(LAYERS) - 1 - i
        box = FancyBboxPatch((0.2, y + 0.12), 8.2, 0.72, boxstyle="round,pad=0.02", fc="#eef3f8", ec=SCOPED, lw=1.2)
        ax.add_patch(box)
        ax.text(0.4, y + 0.56, title, fontsize=11, fontweight="bold", va="center")
        ax.text(0.4, y + 0.3, what, fontsize=9, color=GREY, va="center")
    top, bottom = len(LAYERS) - 0.2, 0.6
    ax.add_patch(FancyArrowPatch((8.9, top), (8.9, bottom), arrowstyle="-|>", mutation_scale=16, color=GREY, lw=1.5))
    ax.text(9.05, (top + bottom) / 2 + 1.2, "a call goes down", rotation=90, va="center", color=GREY)
    ax.add_patch(FancyArrowPatch((10.2, 4.4), (10.2, 0.6), arrowstyle="-|>", mutation_scale=16, color=RAW, lw=1.5))
    ax.text(10.35, 2.5, "scope.cancel(): the call's socket closes", rotation=90, va="center", color=RAW)
    ax.text(
        11.2, 2.5, "async: in the task that owns it; sync: shutdown()", rotation=90, va="center", color=RAW, fontsize=9
    )
    ax.set_title("The path of one call", fontsize=13, loc="left")
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def timeline(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.6, 3.9))
    chat_end = CHAT_RAW_UNITS * TOKEN_INTERVAL
    search_left = SEARCH_DELAY - 0.03  # the user left 30 ms into the search
    lanes = [
        ("non-streaming chat, raw SDKs", [(0, chat_end, RAW, f"LLM: {CHAT_RAW_UNITS} more tokens, billed")]),
        ("non-streaming chat, scoped", [(0, CHAT_SCOPED_SEEN, SCOPED, "")]),
        (
            "RAG, raw SDKs",
            [
                (0, search_left, RAW, "search runs on"),
                (search_left, search_left + SEARCH_DELAY, RAW, "rerank starts"),
                (search_left + SEARCH_DELAY, search_left + SEARCH_DELAY + 3.0, RAW, "LLM starts: 300 tokens"),
            ],
        ),
        ("RAG, scoped", [(0, RAG_SCOPED_SEEN, SCOPED, "")]),
    ]
    for i, (label, spans) in enumerate(lanes):
        y = len(lanes) - 1 - i
        for start, end, color, text in spans:
            ax.barh(y, end - start, left=start, height=0.5, color=color, alpha=0.85, edgecolor="white")
            if text:
                ax.text(start + 0.05, y, text, va="center", color="white", fontsize=9)
        if label.endswith("scoped"):
            seen = spans[0][1]
            note = f"stopped: the provider saw the disconnect {seen * 1000:.1f} ms after the user left"
            note += "; no call started after"
            ax.text(0.05, y, note, va="center", color=SCOPED, fontsize=9)
    ax.axvline(0, color=GREY, lw=1.2, ls="--")
    ax.text(0.02, len(lanes) - 0.35, "the user closes the tab", color=GREY, fontsize=9)
    ax.set_yticks(range(len(lanes)), [label for label, _ in reversed(lanes)])
    ax.set_xlim(-0.1, 5.2)
    ax.set_ylim(-0.6, len(lanes) - 0.2)
    ax.set_xlabel("seconds after the user left (the demo: 10 ms a token, 1 s a search or rerank)")
    ax.set_title("What the provider keeps doing after the user leaves", fontsize=13, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main(out: Path = OUT) -> list[Path]:
    _style()
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "layers.svg", out / "timeline.svg"]
    layers(written[0])
    timeline(written[1])
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)
